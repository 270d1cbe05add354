//! Tests of the kiosk core: every transition, driven through a small harness that keeps the clock, plus a property test feeding random event sequences.

use std::time::{Duration, Instant};

use pivtap_apdu::piv::Pin;
use pivtap_protocol::pin_policy::PinPolicy;
use pivtap_protocol::wire::{ErrorCode, SessionEndReason, UserInfo};
use proptest::prelude::*;
use time::OffsetDateTime;

use super::*;

const DESK: &str = "Desk Reader 00";
const NFC: &str = "NFC Reader 01";
const ALICE_PIN: &str = "918273";
const TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

fn secs(seconds: u64) -> Duration {
    Duration::from_secs(seconds)
}

fn alice() -> UserInfo {
    UserInfo {
        id: "u-alice".to_owned(),
        display_name: "Alice Field".to_owned(),
        mail: Some("alice@example.org".to_owned()),
    }
}

fn bob() -> UserInfo {
    UserInfo {
        id: "u-bob".to_owned(),
        display_name: "Bob Line".to_owned(),
        mail: None,
    }
}

fn alice_card() -> CardSummary {
    CardSummary {
        holder_name: Some("Alice Field".to_owned()),
        card_guid: Some("00112233445566778899aabbccddeeff".to_owned()),
    }
}

fn bob_card() -> CardSummary {
    CardSummary {
        holder_name: Some("Bob Line".to_owned()),
        card_guid: Some("ffeeddccbbaa99887766554433221100".to_owned()),
    }
}

fn signed_in_at() -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap()
}

/// A kiosk with a clock: events happen at `now`, `wait` moves time on and ticks.
struct Harness {
    kiosk: Kiosk,
    now: Instant,
}

impl Harness {
    /// A kiosk with two readers connected.
    fn new(config: CoreConfig) -> Self {
        let mut harness = Harness {
            kiosk: Kiosk::new(config),
            now: Instant::now(),
        };
        harness.send(Event::ReaderAdded {
            reader: DESK.to_owned(),
        });
        harness.send(Event::ReaderAdded {
            reader: NFC.to_owned(),
        });
        harness
    }

    fn tap_then_pin() -> Self {
        Harness::new(CoreConfig::default())
    }

    fn pin_then_tap() -> Self {
        Harness::new(CoreConfig {
            flow: Flow::PinThenTap,
            ..CoreConfig::default()
        })
    }

    fn with_policy(flow: Flow, session: SessionPolicy) -> Self {
        Harness::new(CoreConfig {
            flow,
            session,
            ..CoreConfig::default()
        })
    }

    fn send(&mut self, event: Event) -> Vec<Effect> {
        self.kiosk.handle_event(event, self.now)
    }

    fn wait(&mut self, duration: Duration) -> Vec<Effect> {
        self.now += duration;
        self.send(Event::Tick)
    }

    fn state(&self) -> &State {
        self.kiosk.state()
    }

    /// The latest work the core asked for.
    fn work(&self) -> WorkId {
        WorkId(self.kiosk.last_work)
    }

    fn tap(&mut self, reader: &str) -> Vec<Effect> {
        self.send(Event::CardPresent {
            reader: reader.to_owned(),
        })
    }

    fn remove(&mut self, reader: &str) -> Vec<Effect> {
        self.send(Event::CardRemoved {
            reader: reader.to_owned(),
        })
    }

    fn key(&mut self, key: KeyInput) -> Vec<Effect> {
        self.send(Event::Key(key))
    }

    fn type_digits(&mut self, digits: &str) -> Vec<Effect> {
        digits
            .bytes()
            .flat_map(|digit| self.key(KeyInput::Digit(digit - b'0')))
            .collect()
    }

    fn card_read(&mut self, pin_tries_left: Option<u8>) -> Vec<Effect> {
        self.card_read_of(alice_card(), pin_tries_left)
    }

    fn card_read_of(&mut self, card: CardSummary, pin_tries_left: Option<u8>) -> Vec<Effect> {
        self.send(Event::CardRead {
            work: self.work(),
            card,
            pin_tries_left,
        })
    }

    fn progress(&mut self, step: Step) -> Vec<Effect> {
        self.send(Event::AuthProgress {
            work: self.work(),
            step,
        })
    }

    fn succeed(&mut self, user: UserInfo) -> Vec<Effect> {
        self.send(Event::AuthSucceeded {
            work: self.work(),
            user,
            signed_in_at: signed_in_at(),
            expires_at: signed_in_at() + TOKEN_LIFETIME,
        })
    }

    fn fail(&mut self, failure: AuthFailure) -> Vec<Effect> {
        self.send(Event::AuthFailed {
            work: self.work(),
            failure,
        })
    }

    /// Tap then PIN up to the PIN prompt on `reader`.
    fn reach_pin_entry(&mut self, reader: &str) {
        self.tap(reader);
        self.card_read(Some(3));
        assert!(matches!(self.state(), State::PinEntry { .. }));
    }

    /// Tap then PIN up to the submitted PIN on `reader`.
    fn reach_working(&mut self, reader: &str) {
        self.reach_pin_entry(reader);
        self.type_digits(ALICE_PIN);
        self.key(KeyInput::Enter);
        assert!(matches!(self.state(), State::Working { .. }));
    }

    /// Signs `user` in with a tap on `reader`, in whichever flow is configured.
    fn sign_in(&mut self, reader: &str, user: UserInfo) {
        match self.kiosk.config().flow {
            Flow::TapThenPin => self.reach_working(reader),
            Flow::PinThenTap => {
                self.type_digits(ALICE_PIN);
                self.tap(reader);
                self.card_read(Some(3));
            }
        }
        self.succeed(user);
        assert!(matches!(self.state(), State::SignedIn { .. }));
    }

    fn prompt(&self) -> &PinPrompt {
        match self.state() {
            State::PinEntry { prompt, .. } | State::PinFirst { prompt } => prompt,
            State::SignedIn {
                next_worker: Some(prompt),
                ..
            } => prompt,
            other => panic!("no PIN prompt in {other:?}"),
        }
    }

    fn notice(&self) -> Option<&Notice> {
        match self.state() {
            State::WaitingForCard { notice } => notice.as_ref(),
            State::ReaderMissing { notice }
            | State::PinBlocked { notice, .. }
            | State::ServerUnreachable { notice }
            | State::Error { notice, .. } => Some(notice),
            State::PinEntry { prompt, .. } | State::PinFirst { prompt } => prompt.notice.as_ref(),
            _ => None,
        }
    }

    fn notice_code(&self) -> Option<NoticeCode> {
        self.notice().map(|notice| notice.code)
    }
}

fn published(effects: &[Effect]) -> Vec<&SessionEvent> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Publish(event) => Some(event),
            _ => None,
        })
        .collect()
}

fn published_codes(effects: &[Effect]) -> Vec<NoticeCode> {
    published(effects)
        .into_iter()
        .filter_map(|event| match event {
            SessionEvent::Error(notice) => Some(notice.code),
            _ => None,
        })
        .collect()
}

fn signed_out(effects: &[Effect]) -> Option<(&str, SignOutReason)> {
    published(effects)
        .into_iter()
        .find_map(|event| match event {
            SessionEvent::SignedOut {
                user,
                user_id,
                reason,
            } => {
                assert_eq!(&user.id, user_id, "signed_out names one user");
                Some((user_id.as_str(), *reason))
            }
            _ => None,
        })
}

fn without_ticks(effects: Vec<Effect>) -> Vec<Effect> {
    effects
        .into_iter()
        .filter(|effect| !matches!(effect, Effect::ScheduleTick { .. }))
        .collect()
}

fn authenticate_pin(effects: &[Effect]) -> Option<&Pin> {
    effects.iter().find_map(|effect| match effect {
        Effect::Authenticate { pin, .. } => Some(pin),
        _ => None,
    })
}

fn cancels(effects: &[Effect], reader: &str) -> bool {
    effects.contains(&Effect::CancelCardWork {
        reader: reader.to_owned(),
    })
}

// --- readers ---

#[test]
fn a_new_kiosk_waits_for_a_reader_then_for_a_badge() {
    let mut kiosk = Kiosk::new(CoreConfig::default());
    let now = Instant::now();
    assert_eq!(
        kiosk.state(),
        &State::ReaderMissing {
            notice: Notice::no_reader()
        }
    );
    let effects = kiosk.handle_event(
        Event::ReaderAdded {
            reader: DESK.to_owned(),
        },
        now,
    );
    assert!(effects.is_empty());
    assert_eq!(kiosk.state(), &State::WaitingForCard { notice: None });
    assert!(kiosk.readers().contains(DESK));
}

#[test]
fn a_reader_filter_that_matches_no_reader_says_so_and_names_the_readers_seen() {
    let mut kiosk = Kiosk::new(CoreConfig::default());
    let now = Instant::now();
    let filtered_out = |reader: &str| Event::ReaderFilteredOut {
        reader: reader.to_owned(),
    };
    let effects = kiosk.handle_event(filtered_out(NFC), now);
    let State::ReaderMissing { notice } = kiosk.state() else {
        panic!("{:?}", kiosk.state());
    };
    assert_eq!(notice.code, NoticeCode::NoMatchingReader);
    assert!(
        notice.message.contains(&format!("reader seen: {NFC}")),
        "{notice:?}"
    );
    assert_eq!(published_codes(&effects), [NoticeCode::NoMatchingReader]);
    assert!(kiosk.readers().is_empty(), "a reader left out is not used");
    // A second one is news too, and both are named.
    let effects = kiosk.handle_event(filtered_out(DESK), now);
    assert_eq!(published_codes(&effects), [NoticeCode::NoMatchingReader]);
    let State::ReaderMissing { notice } = kiosk.state() else {
        panic!("{:?}", kiosk.state());
    };
    assert!(
        notice
            .message
            .contains(&format!("readers seen: {DESK}, {NFC}")),
        "{notice:?}"
    );
    // Its badges never count; the readers going away leaves plain "no reader".
    let remove = |reader: &str| Event::ReaderRemoved {
        reader: reader.to_owned(),
    };
    kiosk.handle_event(remove(NFC), now);
    kiosk.handle_event(remove(DESK), now);
    assert_eq!(
        kiosk.state(),
        &State::ReaderMissing {
            notice: Notice::no_reader()
        }
    );
    // A reader that matches is used as ever.
    kiosk.handle_event(filtered_out(NFC), now);
    kiosk.handle_event(
        Event::ReaderAdded {
            reader: DESK.to_owned(),
        },
        now,
    );
    assert_eq!(kiosk.state(), &State::WaitingForCard { notice: None });
}

#[test]
fn unplugging_the_last_reader_shows_reader_missing_and_plugging_it_back_recovers() {
    let mut k = Harness::tap_then_pin();
    k.send(Event::ReaderRemoved {
        reader: NFC.to_owned(),
    });
    assert_eq!(k.state(), &State::WaitingForCard { notice: None });
    let effects = k.send(Event::ReaderRemoved {
        reader: DESK.to_owned(),
    });
    assert_eq!(k.notice_code(), Some(NoticeCode::NoReader));
    assert_eq!(published_codes(&effects), [NoticeCode::NoReader]);
    k.send(Event::ReaderAdded {
        reader: DESK.to_owned(),
    });
    assert_eq!(k.state(), &State::WaitingForCard { notice: None });
}

#[test]
fn unplugging_the_reader_during_pin_entry_abandons_the_sign_in() {
    let mut k = Harness::tap_then_pin();
    k.send(Event::ReaderRemoved {
        reader: NFC.to_owned(),
    });
    k.reach_pin_entry(DESK);
    k.type_digits("918");
    let effects = k.send(Event::ReaderRemoved {
        reader: DESK.to_owned(),
    });
    assert!(cancels(&effects, DESK));
    assert_eq!(
        published_codes(&effects),
        [NoticeCode::ReaderRemoved, NoticeCode::NoReader]
    );
    assert_eq!(k.notice_code(), Some(NoticeCode::NoReader));
    assert!(k.kiosk.typed_pin.is_empty());
    k.send(Event::ReaderAdded {
        reader: DESK.to_owned(),
    });
    assert_eq!(k.state(), &State::WaitingForCard { notice: None });
}

#[test]
fn losing_the_reader_service_shows_it_and_recovers_when_readers_return() {
    let mut k = Harness::tap_then_pin();
    k.tap(DESK);
    let effects = k.send(Event::ReaderServiceLost);
    assert!(cancels(&effects, DESK));
    assert_eq!(
        published_codes(&effects),
        [NoticeCode::ReaderServiceDown],
        "told once"
    );
    assert_eq!(k.notice_code(), Some(NoticeCode::ReaderServiceDown));
    assert!(!k.kiosk.reader_service_available());
    assert!(k.kiosk.readers().is_empty());
    k.send(Event::ReaderServiceRestored);
    assert_eq!(k.notice_code(), Some(NoticeCode::NoReader));
    k.send(Event::ReaderAdded {
        reader: DESK.to_owned(),
    });
    assert_eq!(k.state(), &State::WaitingForCard { notice: None });
    // The badge still on the reader is reported again and read afresh.
    let effects = k.tap(DESK);
    assert!(effects.contains(&Effect::ReadCard {
        work: k.work(),
        reader: DESK.to_owned()
    }));
}

#[test]
fn losing_the_reader_service_signs_out_when_the_badge_keeps_the_session() {
    let mut k = Harness::tap_then_pin();
    k.sign_in(DESK, alice());
    let effects = k.send(Event::ReaderServiceLost);
    assert_eq!(
        signed_out(&effects),
        Some(("u-alice", SignOutReason::ReaderLost))
    );
    assert!(effects.contains(&Effect::DropSession));
    assert_eq!(k.notice_code(), Some(NoticeCode::ReaderServiceDown));
}

#[test]
fn a_session_without_the_removal_policy_survives_the_reader_going_away() {
    let mut k = Harness::with_policy(
        Flow::TapThenPin,
        SessionPolicy {
            sign_out_on_removal: false,
            ..SessionPolicy::default()
        },
    );
    k.sign_in(DESK, alice());
    let effects = k.send(Event::ReaderRemoved {
        reader: DESK.to_owned(),
    });
    assert_eq!(signed_out(&effects), None);
    assert!(!k.kiosk.session().unwrap().card_present);
    k.send(Event::ReaderRemoved {
        reader: NFC.to_owned(),
    });
    assert!(matches!(k.state(), State::SignedIn { .. }));
    let effects = k.send(Event::SignOutRequested);
    assert_eq!(
        signed_out(&effects),
        Some(("u-alice", SignOutReason::Explicit))
    );
    assert_eq!(k.notice_code(), Some(NoticeCode::NoReader));
}

// --- sessions ended at the server ---

#[test]
fn a_session_ended_at_the_server_signs_the_worker_out_saying_why() {
    for (reason, words) in [
        (
            Some(SessionEndReason::Admin),
            "An administrator ended your session",
        ),
        (Some(SessionEndReason::CardLocked), "This badge was locked"),
        (
            Some(SessionEndReason::CardRevoked),
            "This badge was revoked",
        ),
        (
            Some(SessionEndReason::UserLocked),
            "Alice Field's account was locked",
        ),
        (
            Some(SessionEndReason::UserDeleted),
            "Alice Field's account was removed",
        ),
        (Some(SessionEndReason::MaxAge), "reached its time limit"),
        (Some(SessionEndReason::RefreshReused), "ended for safety"),
        (None, "The sign-in server ended Alice Field's session"),
    ] {
        let mut k = Harness::tap_then_pin();
        k.sign_in(DESK, alice());
        let effects = k.send(Event::SessionEndedAtServer { reason });
        assert_eq!(
            signed_out(&effects),
            Some(("u-alice", SignOutReason::EndedAtServer)),
            "{reason:?}"
        );
        assert!(effects.contains(&Effect::DropSession), "{reason:?}");
        let notice = k.notice().expect("a notice").clone();
        assert_eq!(notice.code, NoticeCode::SignedOut);
        assert!(
            notice.message.contains(words),
            "{reason:?}: {}",
            notice.message
        );
        assert!(matches!(k.state(), State::WaitingForCard { .. }));
        // Nothing left to end: a late second answer changes nothing.
        let again = k.send(Event::SessionEndedAtServer { reason });
        assert_eq!(signed_out(&again), None);
        assert!(!again.contains(&Effect::DropSession));
    }
}

#[test]
fn a_session_ended_at_the_server_during_a_switch_ends_the_waiting_worker_only() {
    let mut k = Harness::tap_then_pin();
    k.sign_in(DESK, alice());
    k.tap(NFC);
    assert!(k.kiosk.switching_from().is_some());
    let effects = k.send(Event::SessionEndedAtServer {
        reason: Some(SessionEndReason::Admin),
    });
    assert_eq!(
        signed_out(&effects),
        Some(("u-alice", SignOutReason::EndedAtServer))
    );
    assert!(k.kiosk.switching_from().is_none());
    // Bob's sign-in goes on.
    assert!(matches!(k.state(), State::ReadingCard { .. }));
}

#[test]
fn without_a_session_an_end_at_the_server_changes_nothing() {
    let mut k = Harness::tap_then_pin();
    let effects = k.send(Event::SessionEndedAtServer { reason: None });
    assert!(without_ticks(effects).is_empty());
    assert!(matches!(k.state(), State::WaitingForCard { notice: None }));
}

#[test]
fn the_session_ended_at_the_server_is_named_so_in_the_event() {
    let event = SessionEvent::SignedOut {
        user: alice(),
        user_id: "u-alice".to_owned(),
        reason: SignOutReason::EndedAtServer,
    };
    assert_eq!(
        serde_json::to_value(&event).unwrap()["reason"],
        "ended_at_server"
    );
}

// --- tap then PIN ---

#[test]
fn tap_then_pin_signs_a_worker_in() {
    let mut k = Harness::tap_then_pin();
    let effects = k.tap(DESK);
    let read = k.work();
    assert_eq!(
        without_ticks(effects),
        [
            Effect::Publish(SessionEvent::CardPresent {
                reader: DESK.to_owned()
            }),
            Effect::ReadCard {
                work: read,
                reader: DESK.to_owned()
            },
        ]
    );
    assert!(matches!(k.state(), State::ReadingCard { reader, .. } if reader == DESK));

    let effects = k.card_read(Some(3));
    assert_eq!(
        published(&effects),
        [&SessionEvent::PinRequired {
            tries_left: Some(3)
        }]
    );
    let State::PinEntry { card, prompt, .. } = k.state() else {
        panic!("{:?}", k.state());
    };
    assert_eq!(card.holder_name.as_deref(), Some("Alice Field"));
    assert_eq!((prompt.digits, prompt.tries_left), (0, Some(3)));

    k.type_digits(ALICE_PIN);
    assert_eq!(k.prompt().digits, 6);
    let effects = k.key(KeyInput::Enter);
    let auth = k.work();
    assert_ne!(auth, read);
    assert_eq!(
        without_ticks(effects),
        [Effect::Authenticate {
            work: auth,
            reader: DESK.to_owned(),
            pin: Pin::new(ALICE_PIN).unwrap(),
        }]
    );
    assert!(k.kiosk.typed_pin.is_empty(), "the PIN left the core");
    assert!(matches!(
        k.state(),
        State::Working {
            step: Step::Verifying,
            card: Some(_),
            ..
        }
    ));

    k.progress(Step::Signing);
    assert!(matches!(
        k.state(),
        State::Working {
            step: Step::Signing,
            ..
        }
    ));
    k.progress(Step::SigningIn);
    let effects = k.succeed(alice());
    assert_eq!(
        published(&effects),
        [&SessionEvent::SignedIn {
            user: alice(),
            expires_at: signed_in_at() + TOKEN_LIFETIME,
        }]
    );
    let session = k.kiosk.session().unwrap();
    assert_eq!(session.user, alice());
    assert_eq!(session.reader, DESK);
    assert!(session.card_present);
    assert_eq!(session.ends_at, k.now + TOKEN_LIFETIME);
    // The badge on the reader keeps the session: the only deadline is the token's expiry, with
    // its warning 30 s before (changed on purpose, issue 12: the warning comes first).
    assert!(effects.contains(&Effect::ScheduleTick {
        at: k.now + TOKEN_LIFETIME - secs(30)
    }));
}

#[test]
fn the_state_and_effects_never_show_the_pin() {
    let mut k = Harness::tap_then_pin();
    k.reach_pin_entry(DESK);
    k.type_digits(ALICE_PIN);
    assert!(!format!("{:?}", k.state()).contains(ALICE_PIN));
    assert!(!format!("{:?}", k.kiosk).contains(ALICE_PIN));
    let effects = k.key(KeyInput::Enter);
    let shown = format!("{effects:?}");
    assert!(!shown.contains(ALICE_PIN), "{shown}");
    assert!(shown.contains("REDACTED"));
}

#[test]
fn pin_entry_takes_at_most_eight_digits_and_only_digits() {
    let mut k = Harness::tap_then_pin();
    k.reach_pin_entry(DESK);
    k.type_digits("1234567890");
    assert_eq!(k.prompt().digits, PIN_MAX_DIGITS);
    k.key(KeyInput::Digit(10));
    assert_eq!(k.prompt().digits, PIN_MAX_DIGITS);
    k.key(KeyInput::Backspace);
    k.key(KeyInput::Backspace);
    assert_eq!(k.prompt().digits, 6);
    let effects = k.key(KeyInput::Enter);
    assert_eq!(
        authenticate_pin(&effects),
        Some(&Pin::new("123456").unwrap())
    );
}

#[test]
fn backspace_on_an_empty_pin_changes_nothing() {
    let mut k = Harness::tap_then_pin();
    k.reach_pin_entry(DESK);
    let before = k.state().clone();
    assert!(without_ticks(k.key(KeyInput::Backspace)).is_empty());
    assert_eq!(k.state(), &before);
}

#[test]
fn a_short_pin_is_not_submitted() {
    let mut k = Harness::tap_then_pin();
    k.reach_pin_entry(DESK);
    k.type_digits("12345");
    let effects = k.key(KeyInput::Enter);
    assert_eq!(authenticate_pin(&effects), None);
    assert_eq!(published_codes(&effects), [NoticeCode::PinTooShort]);
    assert_eq!(k.notice_code(), Some(NoticeCode::PinTooShort));
    assert_eq!(k.prompt().digits, 5, "the digits stay for correction");
    k.type_digits("6");
    assert_eq!(k.notice_code(), None, "typing clears the message");
}

#[test]
fn a_wrong_pin_shows_tries_left_and_waits_a_growing_delay() {
    let mut k = Harness::tap_then_pin();
    k.reach_working(DESK);
    let effects = k.fail(AuthFailure::WrongPin {
        tries_left: Some(2),
    });
    assert_eq!(published_codes(&effects), [NoticeCode::WrongPin]);
    assert!(
        !published(&effects)
            .iter()
            .any(|event| matches!(event, SessionEvent::PinRequired { .. })),
        "the PIN is asked for when the delay is over"
    );
    let retry_at = k.now + secs(1);
    let prompt = k.prompt();
    assert_eq!(prompt.tries_left, Some(2));
    assert_eq!(prompt.retry_at, Some(retry_at));
    assert_eq!(prompt.digits, 0);
    assert!(effects.contains(&Effect::ScheduleTick { at: retry_at }));
    assert_eq!(
        k.notice().unwrap().message,
        "Wrong PIN. 2 tries left before the badge is blocked."
    );

    // Typing is allowed during the delay; submitting is not.
    k.type_digits("111111");
    assert!(without_ticks(k.key(KeyInput::Enter)).is_empty());
    assert!(matches!(k.state(), State::PinEntry { .. }));

    let effects = k.wait(secs(1));
    assert_eq!(
        published(&effects),
        [&SessionEvent::PinRequired {
            tries_left: Some(2)
        }]
    );
    assert_eq!(k.prompt().retry_at, None);
    let effects = k.key(KeyInput::Enter);
    assert_eq!(
        authenticate_pin(&effects),
        Some(&Pin::new("111111").unwrap())
    );

    // The second wrong PIN in a row doubles the delay.
    k.fail(AuthFailure::WrongPin {
        tries_left: Some(1),
    });
    assert_eq!(k.prompt().retry_at, Some(k.now + secs(2)));
    assert_eq!(
        k.notice().unwrap().message,
        "Wrong PIN. 1 try left before the badge is blocked."
    );
}

#[test]
fn a_successful_sign_in_resets_the_wrong_pin_delay() {
    let mut k = Harness::tap_then_pin();
    k.reach_working(DESK);
    k.fail(AuthFailure::WrongPin {
        tries_left: Some(2),
    });
    k.wait(secs(1));
    k.type_digits(ALICE_PIN);
    k.key(KeyInput::Enter);
    k.succeed(alice());
    k.send(Event::SignOutRequested);
    k.remove(DESK);
    k.reach_working(DESK);
    k.fail(AuthFailure::WrongPin {
        tries_left: Some(2),
    });
    assert_eq!(k.prompt().retry_at, Some(k.now + secs(1)));
}

#[test]
fn a_wrong_pin_on_a_badge_that_does_not_count_is_a_wrong_pin_with_tries_unknown() {
    let mut k = Harness::tap_then_pin();
    k.reach_working(DESK);
    let effects = k.fail(AuthFailure::WrongPin { tries_left: None });
    assert_eq!(published_codes(&effects), [NoticeCode::WrongPin]);
    assert!(matches!(k.state(), State::PinEntry { .. }), "not blocked");
    assert_eq!(k.prompt().tries_left, None);
    assert_eq!(
        k.notice().unwrap().message,
        "Wrong PIN. The badge does not say how many tries are left before the badge is blocked."
    );
    let effects = k.wait(secs(1));
    assert_eq!(
        published(&effects),
        [&SessionEvent::PinRequired { tries_left: None }]
    );
}

#[test]
fn the_wrong_pin_delay_holds_for_the_next_badge_too() {
    let mut k = Harness::tap_then_pin();
    k.reach_working(DESK);
    k.fail(AuthFailure::WrongPin {
        tries_left: Some(2),
    });
    k.remove(DESK);
    k.tap(NFC);
    let effects = k.card_read(Some(3));
    assert!(
        published(&effects).is_empty(),
        "no PIN asked during the delay"
    );
    assert_eq!(k.prompt().retry_at, Some(k.now + secs(1)));
}

#[test]
fn the_last_wrong_pin_blocks_the_badge_until_it_is_removed() {
    let mut k = Harness::tap_then_pin();
    k.reach_working(DESK);
    let effects = k.fail(AuthFailure::WrongPin {
        tries_left: Some(0),
    });
    assert_eq!(published_codes(&effects), [NoticeCode::PinBlocked]);
    let State::PinBlocked { reader, notice, .. } = k.state() else {
        panic!("{:?}", k.state());
    };
    assert_eq!(reader, DESK);
    assert!(notice.message.contains("Ask your IT service desk"));

    // Keys, time and other badges change nothing while it rests there.
    k.type_digits(ALICE_PIN);
    k.key(KeyInput::Enter);
    k.key(KeyInput::Escape);
    k.wait(secs(600));
    assert!(without_ticks(k.tap(NFC)).is_empty());
    assert!(matches!(k.state(), State::PinBlocked { .. }));

    k.remove(DESK);
    k.remove(NFC);
    assert_eq!(k.state(), &State::WaitingForCard { notice: None });
}

#[test]
fn a_card_reporting_a_blocked_pin_is_blocked_too() {
    let mut k = Harness::tap_then_pin();
    k.reach_working(DESK);
    k.fail(AuthFailure::PinBlocked);
    assert!(matches!(k.state(), State::PinBlocked { .. }));
}

#[test]
fn a_badge_with_no_tries_left_is_blocked_without_asking_for_the_pin() {
    let mut k = Harness::tap_then_pin();
    k.tap(DESK);
    let effects = k.card_read(Some(0));
    assert_eq!(published_codes(&effects), [NoticeCode::PinBlocked]);
    assert!(matches!(k.state(), State::PinBlocked { .. }));
}

#[test]
fn removing_the_badge_during_pin_entry_clears_the_digits() {
    let mut k = Harness::tap_then_pin();
    k.reach_pin_entry(DESK);
    k.type_digits("9182");
    let effects = k.remove(DESK);
    assert!(cancels(&effects, DESK));
    assert_eq!(published_codes(&effects), [NoticeCode::CardRemoved]);
    assert_eq!(k.notice_code(), Some(NoticeCode::CardRemoved));
    assert!(matches!(k.state(), State::WaitingForCard { .. }));
    assert!(k.kiosk.typed_pin.is_empty());
}

#[test]
fn removing_the_badge_while_reading_or_working_abandons_the_work() {
    let mut k = Harness::tap_then_pin();
    k.tap(DESK);
    let read = k.work();
    let effects = k.remove(DESK);
    assert!(cancels(&effects, DESK));
    assert_eq!(k.notice_code(), Some(NoticeCode::CardRemoved));
    // The late answer is ignored.
    let effects = k.send(Event::CardRead {
        work: read,
        card: alice_card(),
        pin_tries_left: Some(3),
    });
    assert!(without_ticks(effects).is_empty());

    k.reach_working(DESK);
    let auth = k.work();
    let effects = k.remove(DESK);
    assert!(cancels(&effects, DESK));
    assert_eq!(k.notice_code(), Some(NoticeCode::CardRemoved));
    k.reach_pin_entry(DESK);
    let effects = k.send(Event::AuthSucceeded {
        work: auth,
        user: alice(),
        signed_in_at: signed_in_at(),
        expires_at: signed_in_at() + TOKEN_LIFETIME,
    });
    assert!(without_ticks(effects).is_empty());
    assert!(matches!(k.state(), State::PinEntry { .. }));
}

#[test]
fn the_card_layer_reporting_removal_returns_to_waiting() {
    let mut k = Harness::tap_then_pin();
    k.tap(DESK);
    let effects = k.send(Event::CardReadFailed {
        work: k.work(),
        failure: CardReadFailure::CardRemoved,
    });
    assert_eq!(published_codes(&effects), [NoticeCode::CardRemoved]);
    k.remove(DESK);
    k.reach_working(DESK);
    k.fail(AuthFailure::CardRemoved);
    assert_eq!(k.notice_code(), Some(NoticeCode::CardRemoved));
    assert!(matches!(k.state(), State::WaitingForCard { .. }));
}

#[test]
fn removal_while_the_server_signs_in_depends_on_the_removal_policy() {
    let mut k = Harness::tap_then_pin();
    k.reach_working(DESK);
    k.progress(Step::SigningIn);
    let effects = k.remove(DESK);
    assert!(cancels(&effects, DESK), "the session would end at once");

    let mut k = Harness::with_policy(
        Flow::TapThenPin,
        SessionPolicy {
            sign_out_on_removal: false,
            ..SessionPolicy::default()
        },
    );
    k.reach_working(DESK);
    k.progress(Step::Signing);
    k.progress(Step::SigningIn);
    assert!(without_ticks(k.remove(DESK)).is_empty());
    k.succeed(alice());
    assert!(!k.kiosk.session().unwrap().card_present);
}

#[test]
fn removal_during_the_pin_check_abandons_it_whatever_the_policy() {
    let mut k = Harness::with_policy(
        Flow::TapThenPin,
        SessionPolicy {
            sign_out_on_removal: false,
            ..SessionPolicy::default()
        },
    );
    k.reach_working(DESK);
    assert!(cancels(&k.remove(DESK), DESK));
}

#[test]
fn escape_cancels_reading_pin_entry_and_work() {
    let mut k = Harness::tap_then_pin();
    k.reach_pin_entry(DESK);
    k.type_digits("918");
    let effects = k.key(KeyInput::Escape);
    assert!(cancels(&effects, DESK));
    assert_eq!(published_codes(&effects), [NoticeCode::Cancelled]);
    assert!(k.kiosk.typed_pin.is_empty());
    assert_eq!(k.notice_code(), Some(NoticeCode::Cancelled));

    k.tap(NFC);
    assert!(cancels(&k.key(KeyInput::Escape), NFC));
    k.remove(NFC);
    k.reach_working(NFC);
    assert!(cancels(&k.key(KeyInput::Escape), NFC));
    assert!(matches!(k.state(), State::WaitingForCard { .. }));
}

#[test]
fn an_abandoned_pin_entry_times_out() {
    let mut k = Harness::tap_then_pin();
    k.reach_pin_entry(DESK);
    k.wait(secs(50));
    k.type_digits("91");
    assert!(
        matches!(k.state(), State::PinEntry { .. }),
        "a key restarts the clock"
    );
    let effects = k.wait(secs(60));
    assert!(cancels(&effects, DESK));
    assert_eq!(published_codes(&effects), [NoticeCode::TimedOut]);
    assert!(matches!(k.state(), State::Error { .. }));
    assert!(k.kiosk.typed_pin.is_empty());
}

#[test]
fn card_or_server_work_that_never_answers_is_abandoned() {
    let mut k = Harness::tap_then_pin();
    k.tap(DESK);
    let effects = k.wait(secs(30));
    assert!(cancels(&effects, DESK));
    assert_eq!(k.notice_code(), Some(NoticeCode::TimedOut));
    k.remove(DESK);
    k.reach_working(DESK);
    k.wait(secs(29));
    assert!(matches!(k.state(), State::Working { .. }));
    assert!(cancels(&k.wait(secs(1)), DESK));
    assert!(matches!(k.state(), State::Error { .. }));
}

#[test]
fn unreadable_and_foreign_cards_show_an_error_until_removed_or_for_a_while() {
    let mut k = Harness::tap_then_pin();
    k.tap(DESK);
    k.send(Event::CardReadFailed {
        work: k.work(),
        failure: CardReadFailure::NotPiv,
    });
    assert_eq!(k.notice_code(), Some(NoticeCode::CardNotSupported));
    k.remove(DESK);
    assert_eq!(k.state(), &State::WaitingForCard { notice: None });

    k.tap(DESK);
    k.send(Event::CardReadFailed {
        work: k.work(),
        failure: CardReadFailure::Unreadable,
    });
    assert_eq!(k.notice_code(), Some(NoticeCode::CardUnreadable));
    k.wait(secs(5));
    assert!(matches!(k.state(), State::Error { .. }));
    k.wait(secs(1));
    assert_eq!(k.state(), &State::WaitingForCard { notice: None });
}

#[test]
fn a_card_error_during_sign_in_is_shown() {
    let mut k = Harness::tap_then_pin();
    k.reach_working(DESK);
    k.fail(AuthFailure::CardError);
    assert_eq!(k.notice_code(), Some(NoticeCode::CardUnreadable));
    k.key(KeyInput::Escape);
    assert_eq!(k.state(), &State::WaitingForCard { notice: None });
}

#[test]
fn a_tap_on_another_reader_during_an_error_starts_over() {
    let mut k = Harness::tap_then_pin();
    k.reach_working(DESK);
    k.fail(AuthFailure::CardError);
    k.tap(NFC);
    assert!(matches!(k.state(), State::ReadingCard { reader, .. } if reader == NFC));
}

// --- the server ---

#[test]
fn a_server_refusal_is_shown_with_its_code() {
    let mut k = Harness::tap_then_pin();
    k.reach_working(DESK);
    let effects = k.fail(AuthFailure::ServerRefused {
        code: ErrorCode::CertificateRevoked,
    });
    let State::Error { notice, .. } = k.state() else {
        panic!("{:?}", k.state());
    };
    assert_eq!(notice.code, NoticeCode::ServerRefused);
    assert_eq!(notice.server_code, Some(ErrorCode::CertificateRevoked));
    assert_eq!(published(&effects), [&SessionEvent::Error(notice.clone())]);
}

#[test]
fn the_server_being_unreachable_during_sign_in_waits_for_it_to_return() {
    let mut k = Harness::tap_then_pin();
    k.reach_working(DESK);
    let effects = k.fail(AuthFailure::ServerUnreachable);
    assert_eq!(published_codes(&effects), [NoticeCode::ServerUnreachable]);
    assert_eq!(k.notice_code(), Some(NoticeCode::ServerUnreachable));
    assert!(!k.kiosk.server_reachable());
    // Waiting does not end it; the server answering does.
    k.wait(secs(600));
    assert!(matches!(k.state(), State::ServerUnreachable { .. }));
    // The badge left meanwhile: the kiosk just waits for the next tap.
    k.remove(DESK);
    k.send(Event::ServerReachable);
    assert_eq!(k.state(), &State::WaitingForCard { notice: None });
}

#[test]
fn a_badge_left_on_the_reader_is_read_again_when_the_server_returns() {
    let mut k = Harness::tap_then_pin();
    k.reach_working(DESK);
    k.fail(AuthFailure::ServerUnreachable);
    k.wait(secs(60));
    // A probe that fails again changes nothing.
    assert!(without_ticks(k.send(Event::ServerUnreachable)).is_empty());
    let effects = k.send(Event::ServerReachable);
    assert!(
        matches!(k.state(), State::ReadingCard { reader, .. } if reader == DESK),
        "{:?}",
        k.state()
    );
    assert!(effects.contains(&Effect::ReadCard {
        work: k.work(),
        reader: DESK.to_owned(),
    }));
    assert!(
        authenticate_pin(&effects).is_none(),
        "the PIN is asked again, never reused"
    );
    assert_eq!(
        published(&effects),
        [&SessionEvent::CardPresent {
            reader: DESK.to_owned()
        }]
    );
    // Only once: the next answer from the server does not read it a third time.
    k.card_read(Some(3));
    assert!(matches!(k.state(), State::PinEntry { .. }));
    assert!(without_ticks(k.send(Event::ServerReachable)).is_empty());
    assert!(matches!(k.state(), State::PinEntry { .. }));
}

#[test]
fn an_untrusted_server_during_sign_in_is_said_and_the_badge_read_again_once_trusted() {
    let mut k = Harness::tap_then_pin();
    k.reach_working(DESK);
    let effects = k.fail(AuthFailure::ServerUntrusted);
    assert_eq!(published_codes(&effects), [NoticeCode::ServerUntrusted]);
    assert_eq!(k.kiosk.server_status(), ServerStatus::Untrusted);
    let message = &k.notice().expect("a notice").message;
    assert!(
        message.contains("does not trust the sign-in server"),
        "{message}"
    );
    assert!(message.contains("your IT service desk"), "{message}");
    k.send(Event::ServerReachable);
    assert!(matches!(k.state(), State::ReadingCard { .. }));
}

#[test]
fn pin_then_tap_uses_the_resting_badge_once_the_server_is_back() {
    let mut k = Harness::pin_then_tap();
    k.type_digits(ALICE_PIN);
    k.tap(DESK);
    // The badge is read first (whose is it?), then the held PIN is spent on it.
    let effects = k.card_read(Some(3));
    assert!(authenticate_pin(&effects).is_some());
    assert!(matches!(k.state(), State::Working { .. }));
    k.fail(AuthFailure::ServerUnreachable);
    let effects = k.send(Event::ServerReachable);
    assert!(authenticate_pin(&effects).is_none(), "the PIN was not held");
    assert_eq!(k.state(), &State::WaitingForCard { notice: None });
    k.type_digits(ALICE_PIN);
    // The resting badge is read again (whose is it now?), then the PIN is spent on it.
    let effects = k.key(KeyInput::Enter);
    assert!(matches!(
        without_ticks(effects).as_slice(),
        [Effect::ReadCard { reader, .. }] if reader == DESK
    ));
    let effects = k.card_read(Some(3));
    assert!(authenticate_pin(&effects).is_some());
    assert!(matches!(k.state(), State::Working { reader, .. } if reader == DESK));
}

#[test]
fn unreachable_untrusted_and_refusing_servers_are_told_apart() {
    let mut k = Harness::tap_then_pin();
    assert_eq!(k.kiosk.server_last_seen(), None);
    k.send(Event::ServerReachable);
    let seen = k.now;
    assert_eq!(k.kiosk.server_last_seen(), Some(seen));
    k.wait(secs(30));
    for (event, status, code, server_code) in [
        (
            Event::ServerUntrusted,
            ServerStatus::Untrusted,
            NoticeCode::ServerUntrusted,
            None,
        ),
        (
            Event::ServerUnreachable,
            ServerStatus::Unreachable,
            NoticeCode::ServerUnreachable,
            None,
        ),
        (
            Event::ServerRefusing {
                code: ErrorCode::DeviceDisabled,
            },
            ServerStatus::Refusing {
                code: ErrorCode::DeviceDisabled,
            },
            NoticeCode::ServerRefused,
            Some(ErrorCode::DeviceDisabled),
        ),
    ] {
        let effects = k.send(event.clone());
        assert_eq!(published_codes(&effects), [code], "{event:?}");
        assert_eq!(k.kiosk.server_status(), status);
        assert!(!k.kiosk.server_reachable());
        let State::ServerUnreachable { notice } = k.state() else {
            panic!("{:?}", k.state());
        };
        assert_eq!(notice.code, code);
        assert_eq!(notice.server_code, server_code);
        // The same news twice is news once.
        assert!(without_ticks(k.send(event)).is_empty());
        // Still last seen when it last answered.
        assert_eq!(k.kiosk.server_last_seen(), Some(seen));
    }
    k.send(Event::ServerReachable);
    assert_eq!(k.kiosk.server_status(), ServerStatus::Connected);
    assert_eq!(k.kiosk.server_last_seen(), Some(k.now));
    assert_eq!(k.state(), &State::WaitingForCard { notice: None });
}

#[test]
fn a_tap_while_the_server_is_unreachable_still_tries() {
    let mut k = Harness::tap_then_pin();
    let effects = k.send(Event::ServerUnreachable);
    assert_eq!(published_codes(&effects), [NoticeCode::ServerUnreachable]);
    assert!(matches!(k.state(), State::ServerUnreachable { .. }));
    assert!(without_ticks(k.send(Event::ServerUnreachable)).is_empty());
    k.reach_working(DESK);
    k.succeed(alice());
    assert!(matches!(k.state(), State::SignedIn { .. }));
}

#[test]
fn the_server_going_away_does_not_interrupt_pin_entry() {
    let mut k = Harness::tap_then_pin();
    k.reach_pin_entry(DESK);
    k.send(Event::ServerUnreachable);
    assert!(matches!(k.state(), State::PinEntry { .. }));
    // After a passing message, the kiosk shows the server is down.
    k.key(KeyInput::Escape);
    assert_eq!(k.notice_code(), Some(NoticeCode::Cancelled));
    k.wait(secs(6));
    assert!(matches!(k.state(), State::ServerUnreachable { .. }));
}

// --- sessions ---

#[test]
fn removing_the_badge_signs_out_when_that_policy_is_on() {
    let mut k = Harness::tap_then_pin();
    k.sign_in(DESK, alice());
    let effects = k.remove(DESK);
    assert_eq!(
        signed_out(&effects),
        Some(("u-alice", SignOutReason::CardRemoved))
    );
    assert!(effects.contains(&Effect::DropSession));
    assert_eq!(
        k.notice().unwrap().message,
        "Alice Field is signed out: the badge was removed."
    );
    assert_eq!(k.kiosk.session(), None);
    k.wait(secs(6));
    assert_eq!(k.state(), &State::WaitingForCard { notice: None });
}

#[test]
fn removing_the_badge_keeps_the_session_when_that_policy_is_off() {
    let mut k = Harness::with_policy(
        Flow::TapThenPin,
        SessionPolicy {
            sign_out_on_removal: false,
            ..SessionPolicy::default()
        },
    );
    k.sign_in(DESK, alice());
    assert_eq!(signed_out(&k.remove(DESK)), None);
    let session = k.kiosk.session().unwrap();
    assert!(!session.card_present);
}

#[test]
fn an_idle_session_ends_after_the_time_out_unless_there_is_activity() {
    let mut k = Harness::with_policy(
        Flow::TapThenPin,
        SessionPolicy {
            sign_out_on_removal: false,
            ..SessionPolicy::default()
        },
    );
    k.sign_in(DESK, alice());
    // The warning 30 s before the idle sign-out comes first (changed on purpose, issue 12).
    assert_eq!(k.kiosk.scheduled_tick, Some(k.now + secs(15 * 60 - 30)));
    k.remove(DESK);
    k.wait(secs(14 * 60));
    k.key(KeyInput::Enter);
    k.wait(secs(14 * 60));
    assert!(matches!(k.state(), State::SignedIn { .. }));
    let effects = k.wait(secs(60));
    assert_eq!(signed_out(&effects), Some(("u-alice", SignOutReason::Idle)));
    assert!(effects.contains(&Effect::DropSession));
}

fn session_ending(effects: &[Effect]) -> Option<(SignOutReason, u64)> {
    published(effects)
        .into_iter()
        .find_map(|event| match event {
            SessionEvent::SessionEnding {
                reason,
                seconds_left,
                ..
            } => Some((*reason, *seconds_left)),
            _ => None,
        })
}

fn warning(k: &Harness) -> Option<SignOutReason> {
    k.kiosk.session()?.warning.map(|warning| warning.reason)
}

#[test]
fn a_warning_comes_before_the_idle_sign_out_and_a_key_keeps_the_worker() {
    let mut k = Harness::with_policy(
        Flow::TapThenPin,
        SessionPolicy {
            sign_out_on_removal: false,
            ..SessionPolicy::default()
        },
    );
    k.sign_in(DESK, alice());
    k.remove(DESK);
    assert_eq!(session_ending(&k.wait(secs(15 * 60 - 31))), None);
    let effects = k.wait(secs(1));
    assert_eq!(session_ending(&effects), Some((SignOutReason::Idle, 30)));
    assert_eq!(warning(&k), Some(SignOutReason::Idle));
    // Any key keeps Alice signed in, and the warning goes.
    k.key(KeyInput::Other);
    assert_eq!(warning(&k), None);
    let effects = k.wait(secs(15 * 60 - 30));
    assert_eq!(session_ending(&effects), Some((SignOutReason::Idle, 30)));
    let effects = k.wait(secs(30));
    assert_eq!(signed_out(&effects), Some(("u-alice", SignOutReason::Idle)));
}

#[test]
fn a_tap_of_the_same_badge_keeps_the_worker_without_a_pin() {
    let mut k = Harness::with_policy(
        Flow::TapThenPin,
        SessionPolicy {
            sign_out_on_removal: false,
            ..SessionPolicy::default()
        },
    );
    k.sign_in(DESK, alice());
    k.remove(DESK);
    k.wait(secs(15 * 60 - 30));
    assert_eq!(warning(&k), Some(SignOutReason::Idle));
    k.tap(DESK);
    let effects = k.card_read(Some(3));
    assert_eq!(signed_out(&effects), None);
    assert!(!published(&effects).contains(&&SessionEvent::PinRequired {
        tries_left: Some(3)
    }));
    assert_eq!(k.kiosk.session().unwrap().user, alice());
    assert_eq!(warning(&k), None);
    assert!(matches!(k.state(), State::SignedIn { .. }));
}

#[test]
fn a_warning_comes_before_the_session_ends_and_a_tap_with_the_pin_renews_it() {
    let mut k = Harness::with_policy(
        Flow::TapThenPin,
        SessionPolicy {
            sign_out_on_removal: false,
            idle_timeout: None,
            ..SessionPolicy::default()
        },
    );
    k.sign_in(DESK, alice());
    k.remove(DESK);
    let effects = k.wait(TOKEN_LIFETIME - secs(30));
    assert_eq!(session_ending(&effects), Some((SignOutReason::Expired, 30)));
    // A key does not stretch a token's life.
    k.key(KeyInput::Other);
    assert_eq!(warning(&k), Some(SignOutReason::Expired));
    // Alice taps and types her PIN: a fresh session replaces the ending one.
    k.tap(DESK);
    k.card_read(Some(3));
    assert!(matches!(k.state(), State::PinEntry { .. }));
    k.type_digits(ALICE_PIN);
    k.key(KeyInput::Enter);
    let effects = k.succeed(alice());
    assert_eq!(
        signed_out(&effects),
        Some(("u-alice", SignOutReason::Renewed))
    );
    assert_eq!(warning(&k), None);
    assert_eq!(k.kiosk.session().unwrap().ends_at, k.now + TOKEN_LIFETIME);
}

#[test]
fn no_warning_when_the_lead_is_zero() {
    let mut k = Harness::with_policy(
        Flow::TapThenPin,
        SessionPolicy {
            sign_out_on_removal: false,
            warning_lead: Duration::ZERO,
            ..SessionPolicy::default()
        },
    );
    k.sign_in(DESK, alice());
    k.remove(DESK);
    let effects = k.wait(secs(15 * 60));
    assert_eq!(session_ending(&effects), None);
    assert_eq!(signed_out(&effects), Some(("u-alice", SignOutReason::Idle)));
}

#[test]
fn a_badge_resting_on_the_reader_keeps_the_session_from_idling() {
    let mut k = Harness::tap_then_pin();
    k.sign_in(DESK, alice());
    k.wait(secs(50 * 60));
    assert!(matches!(k.state(), State::SignedIn { .. }));
}

#[test]
fn the_session_ends_when_the_token_expires() {
    let mut k = Harness::tap_then_pin();
    k.sign_in(DESK, alice());
    k.wait(TOKEN_LIFETIME - secs(1));
    assert!(matches!(k.state(), State::SignedIn { .. }));
    let effects = k.wait(secs(1));
    assert_eq!(
        signed_out(&effects),
        Some(("u-alice", SignOutReason::Expired))
    );
    assert_eq!(k.notice_code(), Some(NoticeCode::SignedOut));
}

#[test]
fn an_expiry_missed_by_a_late_tick_is_handled_before_the_next_event() {
    let mut k = Harness::tap_then_pin();
    k.sign_in(DESK, alice());
    k.now += TOKEN_LIFETIME;
    let effects = k.key(KeyInput::Enter);
    assert_eq!(
        signed_out(&effects),
        Some(("u-alice", SignOutReason::Expired))
    );
}

#[test]
fn an_explicit_sign_out_ends_the_session() {
    let mut k = Harness::tap_then_pin();
    k.sign_in(DESK, alice());
    let effects = k.send(Event::SignOutRequested);
    assert_eq!(
        signed_out(&effects),
        Some(("u-alice", SignOutReason::Explicit))
    );
    assert!(effects.contains(&Effect::DropSession));
    assert_eq!(k.notice().unwrap().message, "Alice Field is signed out.");
    // The badge still resting there does not sign in again by itself.
    k.wait(secs(6));
    assert_eq!(k.state(), &State::WaitingForCard { notice: None });
    assert!(without_ticks(k.send(Event::SignOutRequested)).is_empty());
}

#[test]
fn another_badge_switches_the_user_once_the_new_pin_is_accepted() {
    // Changed on purpose (issue 12): the current worker stays signed in until the new worker's
    // PIN is accepted; before, the tap itself signed them out.
    let mut k = Harness::tap_then_pin();
    k.sign_in(DESK, alice());
    let effects = k.tap(NFC);
    assert_eq!(signed_out(&effects), None, "Alice stays signed in");
    assert!(!effects.contains(&Effect::DropSession));
    assert!(effects.contains(&Effect::ReadCard {
        work: k.work(),
        reader: NFC.to_owned()
    }));
    assert!(matches!(k.state(), State::ReadingCard { reader, .. } if reader == NFC));
    assert_eq!(k.kiosk.switching_from().unwrap().user, alice());
    k.card_read_of(bob_card(), Some(3));
    k.type_digits("246813");
    let effects = k.key(KeyInput::Enter);
    assert_eq!(signed_out(&effects), None, "not before the PIN is accepted");
    let effects = k.succeed(bob());
    assert_eq!(
        signed_out(&effects),
        Some(("u-alice", SignOutReason::Switched))
    );
    let events = published(&effects);
    let out = events
        .iter()
        .position(|e| matches!(e, SessionEvent::SignedOut { .. }));
    let signed_in = events
        .iter()
        .position(|e| matches!(e, SessionEvent::SignedIn { .. }));
    assert!(out < signed_in, "signed_out before signed_in: {events:?}");
    let drop = effects.iter().position(|e| *e == Effect::DropSession);
    let publish_in = effects
        .iter()
        .position(|e| matches!(e, Effect::Publish(SessionEvent::SignedIn { .. })));
    assert!(
        drop < publish_in,
        "Alice's token is dropped before Bob's is kept"
    );
    assert_eq!(k.kiosk.session().unwrap().user, bob());
    assert!(k.kiosk.switching_from().is_none());
    // Alice's badge leaving afterwards changes nothing.
    assert!(without_ticks(k.remove(DESK)).is_empty());
}

#[test]
fn escape_during_a_switch_keeps_the_current_worker_signed_in() {
    let mut k = Harness::tap_then_pin();
    k.sign_in(DESK, alice());
    k.tap(NFC);
    k.card_read_of(bob_card(), Some(3));
    k.type_digits("2468");
    let effects = k.key(KeyInput::Escape);
    assert_eq!(signed_out(&effects), None);
    assert!(!effects.contains(&Effect::DropSession));
    assert!(effects.contains(&Effect::CancelCardWork {
        reader: NFC.to_owned()
    }));
    let session = k.kiosk.session().expect("Alice is still signed in");
    assert_eq!(session.user, alice());
    assert!(session.card_present);
    assert!(k.kiosk.switching_from().is_none());
}

#[test]
fn a_wrong_pin_during_a_switch_keeps_the_current_worker_signed_in() {
    let mut k = Harness::tap_then_pin();
    k.sign_in(DESK, alice());
    k.tap(NFC);
    k.card_read_of(bob_card(), Some(3));
    k.type_digits("246813");
    k.key(KeyInput::Enter);
    let effects = k.fail(AuthFailure::WrongPin {
        tries_left: Some(2),
    });
    assert_eq!(signed_out(&effects), None);
    assert!(matches!(k.state(), State::PinEntry { reader, .. } if reader == NFC));
    assert_eq!(k.kiosk.switching_from().unwrap().user, alice());
    // The new worker gives up by taking the badge away: back to Alice.
    let effects = k.remove(NFC);
    assert_eq!(signed_out(&effects), None);
    assert_eq!(k.kiosk.session().unwrap().user, alice());
    // A refusal by the server, too, leaves Alice signed in once its message is shown.
    k.tap(NFC);
    k.card_read_of(bob_card(), Some(3));
    k.wait(secs(2));
    k.type_digits("246813");
    k.key(KeyInput::Enter);
    k.fail(AuthFailure::ServerRefused {
        code: ErrorCode::CertificateRevoked,
    });
    assert!(matches!(k.state(), State::Error { .. }));
    let effects = k.wait(secs(6));
    assert_eq!(signed_out(&effects), None);
    assert_eq!(k.kiosk.session().unwrap().user, alice());
}

#[test]
fn the_waiting_worker_still_leaves_with_their_badge_or_their_time_during_a_switch() {
    let mut k = Harness::tap_then_pin();
    k.sign_in(DESK, alice());
    k.tap(NFC);
    k.card_read_of(bob_card(), Some(3));
    let effects = k.remove(DESK);
    assert_eq!(
        signed_out(&effects),
        Some(("u-alice", SignOutReason::CardRemoved))
    );
    assert!(effects.contains(&Effect::DropSession));
    assert!(
        matches!(k.state(), State::PinEntry { .. }),
        "Bob carries on"
    );
    k.key(KeyInput::Escape);
    assert_eq!(k.kiosk.session(), None, "nobody to return to");

    let mut k = Harness::tap_then_pin();
    k.sign_in(DESK, alice());
    k.wait(TOKEN_LIFETIME - secs(5));
    k.tap(NFC);
    k.card_read_of(bob_card(), Some(3));
    let effects = k.wait(secs(5));
    assert_eq!(
        signed_out(&effects),
        Some(("u-alice", SignOutReason::Expired))
    );
    assert!(matches!(k.state(), State::PinEntry { .. }));
}

#[test]
fn shutdown_signs_the_worker_out() {
    let mut k = Harness::tap_then_pin();
    k.sign_in(DESK, alice());
    let effects = k.send(Event::Shutdown);
    assert_eq!(
        signed_out(&effects),
        Some(("u-alice", SignOutReason::Shutdown))
    );
    assert!(effects.contains(&Effect::DropSession));
    assert_eq!(k.kiosk.session(), None);

    // A sign-in under way is cancelled and a waiting worker signed out too.
    let mut k = Harness::tap_then_pin();
    k.sign_in(DESK, alice());
    k.tap(NFC);
    k.card_read_of(bob_card(), Some(3));
    k.type_digits("2468");
    let effects = k.send(Event::Shutdown);
    assert_eq!(
        signed_out(&effects),
        Some(("u-alice", SignOutReason::Shutdown))
    );
    assert!(effects.contains(&Effect::CancelCardWork {
        reader: NFC.to_owned()
    }));
    assert_eq!(k.kiosk.session(), None);
    assert!(k.kiosk.typed_pin.is_empty());

    // Nobody signed in: nothing to publish.
    let mut k = Harness::tap_then_pin();
    assert_eq!(signed_out(&k.send(Event::Shutdown)), None);
}

#[test]
fn another_badge_is_ignored_when_fast_user_switch_is_off() {
    let mut k = Harness::with_policy(
        Flow::TapThenPin,
        SessionPolicy {
            fast_user_switch: false,
            ..SessionPolicy::default()
        },
    );
    k.sign_in(DESK, alice());
    assert!(without_ticks(k.tap(NFC)).is_empty());
    assert_eq!(k.kiosk.session().unwrap().user, alice());
    k.remove(DESK);
    assert!(matches!(k.state(), State::WaitingForCard { .. }));
}

// --- PIN then tap ---

#[test]
fn pin_then_tap_signs_in_on_the_tap_without_asking_again() {
    let mut k = Harness::pin_then_tap();
    assert_eq!(k.state(), &State::WaitingForCard { notice: None });
    k.type_digits(ALICE_PIN);
    let State::PinFirst { prompt } = k.state() else {
        panic!("{:?}", k.state());
    };
    assert_eq!(prompt.digits, 6);
    // The badge is read first (whose is it?), then the held PIN is spent on it.
    let effects = k.tap(NFC);
    assert_eq!(
        without_ticks(effects),
        [
            Effect::Publish(SessionEvent::CardPresent {
                reader: NFC.to_owned()
            }),
            Effect::ReadCard {
                work: k.work(),
                reader: NFC.to_owned(),
            },
        ]
    );
    assert!(k.kiosk.typed_pin.is_empty());
    let effects = k.card_read(Some(3));
    assert_eq!(
        without_ticks(effects),
        [Effect::Authenticate {
            work: k.work(),
            reader: NFC.to_owned(),
            pin: Pin::new(ALICE_PIN).unwrap(),
        }]
    );
    assert!(matches!(k.state(), State::Working { card: Some(card), .. } if *card == alice_card()));
    k.succeed(alice());
    assert!(matches!(k.state(), State::SignedIn { .. }));
}

#[test]
fn pin_then_tap_forgets_a_held_pin_after_the_hold_time() {
    let mut k = Harness::pin_then_tap();
    k.type_digits("9182");
    k.wait(secs(20));
    k.type_digits("73");
    k.wait(secs(29));
    assert_eq!(k.prompt().digits, 6);
    let effects = k.wait(secs(1));
    assert_eq!(published_codes(&effects), [NoticeCode::TimedOut]);
    assert!(k.kiosk.typed_pin.is_empty());
    assert_eq!(k.notice_code(), Some(NoticeCode::TimedOut));
    let effects = k.tap(NFC);
    assert_eq!(authenticate_pin(&effects), None);
}

#[test]
fn pin_then_tap_asks_for_the_pin_when_the_badge_comes_first() {
    let mut k = Harness::pin_then_tap();
    let effects = k.tap(DESK);
    assert_eq!(authenticate_pin(&effects), None);
    assert!(published(&effects).contains(&&SessionEvent::PinRequired { tries_left: None }));
    assert_eq!(k.notice_code(), Some(NoticeCode::TypePinFirst));
    // With the badge resting on the reader, Enter uses it.
    k.type_digits(ALICE_PIN);
    let effects = k.key(KeyInput::Enter);
    assert!(effects.iter().any(|effect| matches!(
        effect,
        Effect::ReadCard { reader, .. } if reader == DESK
    )));
    let effects = k.card_read(Some(3));
    assert!(effects.iter().any(|effect| matches!(
        effect,
        Effect::Authenticate { reader, .. } if reader == DESK
    )));
}

#[test]
fn pin_then_tap_keeps_a_short_pin_and_says_to_finish_it() {
    let mut k = Harness::pin_then_tap();
    k.type_digits("918");
    let effects = k.tap(NFC);
    assert_eq!(authenticate_pin(&effects), None);
    assert_eq!(k.prompt().digits, 3);
    assert_eq!(k.notice_code(), Some(NoticeCode::TypePinFirst));
    let effects = k.key(KeyInput::Enter);
    assert_eq!(published_codes(&effects), [NoticeCode::PinTooShort]);
    k.type_digits("273");
    k.key(KeyInput::Enter);
    k.card_read(Some(3));
    assert!(matches!(k.state(), State::Working { reader, .. } if reader == NFC));
}

#[test]
fn pin_then_tap_enter_without_a_badge_waits_for_the_tap() {
    let mut k = Harness::pin_then_tap();
    k.type_digits(ALICE_PIN);
    assert!(without_ticks(k.key(KeyInput::Enter)).is_empty());
    assert!(matches!(k.state(), State::PinFirst { .. }));
}

#[test]
fn pin_then_tap_escape_forgets_the_held_pin() {
    let mut k = Harness::pin_then_tap();
    k.type_digits(ALICE_PIN);
    k.key(KeyInput::Escape);
    assert_eq!(k.state(), &State::WaitingForCard { notice: None });
    assert!(k.kiosk.typed_pin.is_empty());
}

#[test]
fn pin_then_tap_wrong_pin_asks_again_after_the_delay() {
    let mut k = Harness::pin_then_tap();
    k.type_digits(ALICE_PIN);
    k.tap(NFC);
    k.card_read(Some(3));
    k.fail(AuthFailure::WrongPin {
        tries_left: Some(2),
    });
    k.remove(NFC);
    let prompt = k.prompt();
    assert_eq!(
        (prompt.digits, prompt.tries_left, prompt.retry_at),
        (0, Some(2), Some(k.now + secs(1)))
    );
    k.type_digits("111111");
    let effects = k.tap(NFC);
    assert_eq!(authenticate_pin(&effects), None, "too soon");
    assert_eq!(k.notice_code(), Some(NoticeCode::WaitBeforeRetry));
    assert_eq!(k.prompt().digits, 6, "the PIN stays held");
    let effects = k.wait(secs(1));
    assert_eq!(
        published(&effects),
        [&SessionEvent::PinRequired {
            tries_left: Some(2)
        }]
    );
    k.key(KeyInput::Enter);
    let effects = k.card_read(Some(2));
    assert_eq!(
        authenticate_pin(&effects),
        Some(&Pin::new("111111").unwrap()),
        "the badge still on the reader is used"
    );
}

#[test]
fn pin_then_tap_next_worker_types_the_pin_while_the_last_is_signed_in() {
    let mut k = Harness::pin_then_tap();
    k.sign_in(NFC, alice());
    k.remove(NFC);
    assert_eq!(k.kiosk.session(), None, "removal signs Alice out");

    let mut k = Harness::with_policy(
        Flow::PinThenTap,
        SessionPolicy {
            sign_out_on_removal: false,
            ..SessionPolicy::default()
        },
    );
    k.sign_in(NFC, alice());
    k.remove(NFC);
    k.type_digits("2468");
    assert_eq!(k.prompt().digits, 4);
    k.key(KeyInput::Escape);
    assert!(matches!(
        k.state(),
        State::SignedIn {
            next_worker: None,
            ..
        }
    ));
    k.type_digits("246813");
    let effects = k.tap(NFC);
    assert_eq!(signed_out(&effects), None, "not before the PIN is accepted");
    let effects = k.card_read_of(bob_card(), Some(3));
    assert_eq!(
        authenticate_pin(&effects),
        Some(&Pin::new("246813").unwrap())
    );
    let effects = k.succeed(bob());
    assert_eq!(
        signed_out(&effects),
        Some(("u-alice", SignOutReason::Switched))
    );
    assert_eq!(k.kiosk.session().unwrap().user, bob());
}

#[test]
fn pin_then_tap_a_pin_typed_after_a_wrong_pin_is_never_spent_on_another_badge() {
    let mut k = Harness::pin_then_tap();
    k.type_digits(ALICE_PIN);
    k.tap(NFC);
    k.card_read(Some(3));
    k.fail(AuthFailure::WrongPin {
        tries_left: Some(2),
    });
    k.remove(NFC);
    k.wait(secs(1));
    k.type_digits("111111");
    // Bob taps, not Alice: the PIN typed for Alice's badge is cleared, no try of Bob's spent.
    k.tap(NFC);
    let effects = k.card_read_of(bob_card(), Some(3));
    assert_eq!(authenticate_pin(&effects), None);
    assert_eq!(published_codes(&effects), [NoticeCode::PinForAnotherBadge]);
    assert!(k.notice().unwrap().message.contains("Bob Line's badge"));
    assert!(k.kiosk.typed_pin.is_empty());
    // Bob's own PIN, typed for his badge, is spent on it.
    k.remove(NFC);
    k.type_digits("246813");
    k.tap(NFC);
    let effects = k.card_read_of(bob_card(), Some(3));
    assert_eq!(
        authenticate_pin(&effects),
        Some(&Pin::new("246813").unwrap())
    );
}

#[test]
fn pin_then_tap_a_blocked_badge_is_told_before_any_pin_is_spent() {
    let mut k = Harness::pin_then_tap();
    k.type_digits(ALICE_PIN);
    k.tap(NFC);
    let effects = k.card_read(Some(0));
    assert_eq!(authenticate_pin(&effects), None);
    assert!(matches!(k.state(), State::PinBlocked { .. }));
    assert!(k.kiosk.typed_pin.is_empty());
}

#[test]
fn pin_then_tap_the_signed_in_workers_own_tap_keeps_the_next_workers_pin() {
    let mut k = Harness::with_policy(
        Flow::PinThenTap,
        SessionPolicy {
            sign_out_on_removal: false,
            ..SessionPolicy::default()
        },
    );
    k.sign_in(NFC, alice());
    k.remove(NFC);
    k.type_digits("246813");
    // Alice taps her own badge again: she stays, and Bob's PIN is not spent on her badge.
    k.tap(NFC);
    let effects = k.card_read(Some(3));
    assert_eq!(authenticate_pin(&effects), None);
    assert_eq!(signed_out(&effects), None);
    assert_eq!(k.kiosk.session().unwrap().user, alice());
    assert_eq!(k.prompt().digits, 6, "the next worker's PIN is still held");
    k.remove(NFC);
    k.tap(NFC);
    let effects = k.card_read_of(bob_card(), Some(3));
    assert_eq!(
        authenticate_pin(&effects),
        Some(&Pin::new("246813").unwrap())
    );
}

#[test]
fn pin_then_tap_next_worker_pin_is_forgotten_after_the_hold_time() {
    let mut k = Harness::with_policy(
        Flow::PinThenTap,
        SessionPolicy {
            sign_out_on_removal: false,
            ..SessionPolicy::default()
        },
    );
    k.sign_in(NFC, alice());
    k.type_digits("246813");
    k.wait(secs(30));
    assert!(matches!(
        k.state(),
        State::SignedIn {
            next_worker: None,
            ..
        }
    ));
    assert!(k.kiosk.typed_pin.is_empty());
}

#[test]
fn digits_while_signed_in_are_only_activity_in_tap_then_pin() {
    let mut k = Harness::tap_then_pin();
    k.sign_in(DESK, alice());
    k.type_digits("1234");
    assert!(matches!(
        k.state(),
        State::SignedIn {
            next_worker: None,
            ..
        }
    ));
    assert!(k.kiosk.typed_pin.is_empty());
}

// --- ticks ---

#[test]
fn each_new_deadline_is_announced_once_and_again_after_a_tick() {
    let mut k = Harness::tap_then_pin();
    let effects = k.tap(DESK);
    let timeout = k.now + secs(30);
    assert!(effects.contains(&Effect::ScheduleTick { at: timeout }));
    let effects = k.wait(secs(1));
    assert_eq!(effects, [Effect::ScheduleTick { at: timeout }]);
    assert!(
        k.send(Event::ReaderAdded {
            reader: "Another".to_owned()
        })
        .is_empty()
    );
}

// --- session events ---

#[test]
fn session_events_are_json_objects_tagged_by_event() {
    let signed_in = SessionEvent::SignedIn {
        user: alice(),
        expires_at: signed_in_at() + TOKEN_LIFETIME,
    };
    assert_eq!(
        serde_json::to_value(&signed_in).unwrap(),
        serde_json::json!({
            "event": "signed_in",
            "user": {"id": "u-alice", "display_name": "Alice Field", "mail": "alice@example.org"},
            "expires_at": "2025-06-15T16:06:40Z",
        })
    );
    let signed_out = SessionEvent::SignedOut {
        user: alice(),
        user_id: "u-alice".to_owned(),
        reason: SignOutReason::CardRemoved,
    };
    // The same user fields as signed_in (user_id kept for existing consumers).
    assert_eq!(
        serde_json::to_value(&signed_out).unwrap(),
        serde_json::json!({
            "event": "signed_out",
            "user": {"id": "u-alice", "display_name": "Alice Field", "mail": "alice@example.org"},
            "user_id": "u-alice",
            "reason": "card_removed",
        })
    );
    let at = OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap();
    assert_eq!(
        signed_out.to_json_at(at)["at"],
        "2025-06-15T15:06:40Z",
        "events carry their time in RFC 3339"
    );
    assert_eq!(
        serde_json::to_string(&SessionEvent::PinRequired {
            tries_left: Some(2)
        })
        .unwrap(),
        r#"{"event":"pin_required","tries_left":2}"#
    );
    assert_eq!(
        serde_json::to_string(&SessionEvent::CardPresent {
            reader: DESK.to_owned()
        })
        .unwrap(),
        r#"{"event":"card_present","reader":"Desk Reader 00"}"#
    );
    let refused = SessionEvent::Error(Notice::server_refused(ErrorCode::CardLocked, "the office"));
    assert_eq!(
        serde_json::to_string(&refused).unwrap(),
        r#"{"event":"error","code":"server_refused","server_code":"card_locked","message":"This badge is locked. Ask the office."}"#
    );
    assert_eq!(
        serde_json::to_string(&SessionEvent::Error(Notice::cancelled())).unwrap(),
        r#"{"event":"error","code":"cancelled","message":"Sign-in cancelled."}"#
    );
    for event in [signed_in, signed_out, refused] {
        let line = serde_json::to_string(&event).unwrap();
        assert_eq!(serde_json::from_str::<SessionEvent>(&line).unwrap(), event);
    }
}

// --- changing the PIN after sign-in ---

const NEW_PIN: &str = "240913";
const PUK: &str = "12345678";

impl Harness {
    /// Types `digits` and presses Enter, returning every effect.
    fn enter_value(&mut self, digits: &str) -> Vec<Effect> {
        let mut effects = self.type_digits(digits);
        effects.extend(self.key(KeyInput::Enter));
        effects
    }

    fn form(&self) -> &PinForm {
        self.kiosk.pin_form().expect("a PIN form is open")
    }

    fn form_step(&self) -> PinFormStep {
        self.form().step.clone()
    }

    fn pin_work(&mut self, result: Result<(), PinWorkFailure>) -> Vec<Effect> {
        self.send(Event::PinWorkDone {
            work: self.work(),
            result,
        })
    }

    /// Signed in on the desk reader, then the current PIN and the new PIN twice typed.
    fn reach_pin_change_work(&mut self) -> Vec<Effect> {
        self.sign_in(DESK, alice());
        self.send(Event::ChangePinRequested);
        self.enter_value(ALICE_PIN);
        self.enter_value(NEW_PIN);
        self.enter_value(NEW_PIN)
    }

    /// The PIN blocked on the desk reader (tap then PIN), the PUK and the new PIN twice typed.
    fn reach_unblock_work(&mut self) -> Vec<Effect> {
        self.tap(DESK);
        self.card_read(Some(0));
        assert!(matches!(self.state(), State::PinBlocked { .. }));
        self.send(Event::UnblockRequested);
        self.enter_value(PUK);
        self.enter_value(NEW_PIN);
        self.enter_value(NEW_PIN)
    }
}

fn change_pin_effect(effects: &[Effect]) -> Option<(&str, &Pin, &Pin)> {
    effects.iter().find_map(|effect| match effect {
        Effect::ChangePin {
            reader,
            current,
            new,
            ..
        } => Some((reader.as_str(), current, new)),
        _ => None,
    })
}

fn unblock_effect(effects: &[Effect]) -> Option<(&str, &pivtap_apdu::piv::Puk, &Pin)> {
    effects.iter().find_map(|effect| match effect {
        Effect::UnblockPin {
            reader,
            puk,
            new_pin,
            ..
        } => Some((reader.as_str(), puk, new_pin)),
        _ => None,
    })
}

fn form_failures(effects: &[Effect]) -> Vec<(PinFormFailure, Option<u8>)> {
    published(effects)
        .into_iter()
        .filter_map(|event| match event {
            SessionEvent::PinChangeFailed {
                reason, tries_left, ..
            }
            | SessionEvent::UnblockFailed {
                reason, tries_left, ..
            } => Some((*reason, *tries_left)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_signed_in_worker_changes_the_pin_current_then_new_twice() {
    let mut k = Harness::tap_then_pin();
    k.sign_in(DESK, alice());
    let effects = k.send(Event::ChangePinRequested);
    assert_eq!(
        published(&effects),
        [&SessionEvent::CurrentPinRequired { tries_left: None }]
    );
    assert_eq!(k.form().purpose, PinFormPurpose::ChangePin);
    assert_eq!(k.form_step(), PinFormStep::CurrentPin);
    k.type_digits(ALICE_PIN);
    assert_eq!(k.form().digits, ALICE_PIN.len());
    let effects = k.key(KeyInput::Enter);
    assert_eq!(
        published(&effects),
        [&SessionEvent::NewPinRequired { repeat: false }]
    );
    let effects = k.enter_value(NEW_PIN);
    assert_eq!(
        published(&effects),
        [&SessionEvent::NewPinRequired { repeat: true }]
    );
    assert_eq!(k.form_step(), PinFormStep::RepeatNewPin);
    let effects = k.enter_value(NEW_PIN);
    let (reader, current, new) = change_pin_effect(&effects).expect("the card is asked");
    assert_eq!(reader, DESK);
    assert_eq!(current.as_bytes(), ALICE_PIN.as_bytes());
    assert_eq!(new.as_bytes(), NEW_PIN.as_bytes());
    assert!(matches!(k.form_step(), PinFormStep::Working { .. }));

    let effects = k.pin_work(Ok(()));
    assert_eq!(published(&effects), [&SessionEvent::PinChanged]);
    assert_eq!(k.form_step(), PinFormStep::Finished);
    assert_eq!(
        k.form().notice.as_ref().map(|n| n.code),
        Some(NoticeCode::PinChanged)
    );
    assert!(k.kiosk.form_first.is_empty() && k.kiosk.form_new.is_empty());
    // Any key closes the message (a letter as well as Enter); the worker is still signed in.
    k.key(KeyInput::Other);
    assert!(k.kiosk.pin_form().is_none());
    assert_eq!(k.kiosk.session().unwrap().user, alice());
}

#[test]
fn a_finished_pin_change_message_goes_after_a_while() {
    let mut k = Harness::tap_then_pin();
    k.reach_pin_change_work();
    k.pin_work(Ok(()));
    k.wait(CoreConfig::default().message_duration);
    assert!(k.kiosk.pin_form().is_none());
    assert!(matches!(k.state(), State::SignedIn { .. }));
}

#[test]
fn new_pins_breaking_the_policy_are_refused_before_the_card() {
    let mut k = Harness::tap_then_pin();
    k.sign_in(DESK, alice());
    k.send(Event::ChangePinRequested);
    k.enter_value(ALICE_PIN);
    for (pin, rule) in [
        ("345678", "consecutive"),
        ("555555", "repeated"),
        ("12345", "at least 6"),
        (ALICE_PIN, "differ"),
    ] {
        let effects = k.enter_value(pin);
        assert!(change_pin_effect(&effects).is_none());
        assert_eq!(form_failures(&effects), [(PinFormFailure::Policy, None)]);
        assert!(
            published(&effects).contains(&&SessionEvent::NewPinRequired { repeat: false }),
            "asked again"
        );
        assert_eq!(k.form_step(), PinFormStep::NewPin, "{pin}");
        assert_eq!(k.form().digits, 0);
        let notice = k.form().notice.clone().unwrap();
        assert_eq!(notice.code, NoticeCode::PinPolicy);
        assert!(notice.message.contains(rule), "{}", notice.message);
        assert!(!notice.message.contains(pin), "{}", notice.message);
    }
    // A good one goes through.
    k.enter_value(NEW_PIN);
    assert_eq!(k.form_step(), PinFormStep::RepeatNewPin);
}

#[test]
fn the_servers_pin_policy_replaces_the_default() {
    let mut k = Harness::tap_then_pin();
    let relaxed = PinPolicy {
        forbid_sequences: false,
        ..PinPolicy::default()
    };
    k.send(Event::PinPolicyKnown(relaxed));
    assert_eq!(k.kiosk.config().pin_policy, relaxed);
    // An invalid policy is ignored.
    k.send(Event::PinPolicyKnown(PinPolicy {
        min_length: 4,
        ..PinPolicy::default()
    }));
    assert_eq!(k.kiosk.config().pin_policy, relaxed);
    k.sign_in(DESK, alice());
    k.send(Event::ChangePinRequested);
    k.enter_value(ALICE_PIN);
    k.enter_value("234567");
    let effects = k.enter_value("234567");
    assert!(change_pin_effect(&effects).is_some());
}

#[test]
fn a_repetition_that_differs_asks_for_the_new_pin_again() {
    let mut k = Harness::tap_then_pin();
    k.sign_in(DESK, alice());
    k.send(Event::ChangePinRequested);
    k.enter_value(ALICE_PIN);
    k.enter_value(NEW_PIN);
    let effects = k.enter_value("240914");
    assert!(change_pin_effect(&effects).is_none());
    assert_eq!(form_failures(&effects), [(PinFormFailure::Mismatch, None)]);
    assert_eq!(k.form_step(), PinFormStep::NewPin);
    assert_eq!(
        k.form().notice.as_ref().map(|n| n.code),
        Some(NoticeCode::PinsDiffer)
    );
    assert!(
        k.kiosk.form_new.is_empty(),
        "the first new PIN is forgotten"
    );
    k.enter_value("579135");
    let effects = k.enter_value("579135");
    let (_, current, new) = change_pin_effect(&effects).unwrap();
    assert_eq!(current.as_bytes(), ALICE_PIN.as_bytes());
    assert_eq!(new.as_bytes(), b"579135");
}

#[test]
fn a_short_current_pin_is_not_accepted() {
    let mut k = Harness::tap_then_pin();
    k.sign_in(DESK, alice());
    k.send(Event::ChangePinRequested);
    k.enter_value("1234");
    assert_eq!(k.form_step(), PinFormStep::CurrentPin);
    assert_eq!(
        k.form().notice.as_ref().map(|n| n.code),
        Some(NoticeCode::PinTooShort)
    );
}

#[test]
fn a_wrong_current_pin_shows_the_tries_left_and_asks_again() {
    let mut k = Harness::tap_then_pin();
    k.reach_pin_change_work();
    let effects = k.pin_work(Err(PinWorkFailure::WrongPin {
        tries_left: Some(2),
    }));
    assert_eq!(
        form_failures(&effects),
        [(PinFormFailure::WrongPin, Some(2))]
    );
    assert!(
        published(&effects).contains(&&SessionEvent::CurrentPinRequired {
            tries_left: Some(2)
        })
    );
    assert_eq!(k.form_step(), PinFormStep::CurrentPin);
    assert_eq!(k.form().tries_left, Some(2));
    let notice = k.form().notice.clone().unwrap();
    assert_eq!(notice.code, NoticeCode::WrongPin);
    assert!(
        notice.message.contains("2 tries left"),
        "{}",
        notice.message
    );
    assert!(k.kiosk.form_first.is_empty() && k.kiosk.form_new.is_empty());

    // The last try blocks the PIN: the change ends, the session stays.
    k.enter_value("918274");
    k.enter_value(NEW_PIN);
    k.enter_value(NEW_PIN);
    let effects = k.pin_work(Err(PinWorkFailure::WrongPin {
        tries_left: Some(0),
    }));
    assert_eq!(
        form_failures(&effects),
        [(PinFormFailure::PinBlocked, None)]
    );
    assert_eq!(k.form_step(), PinFormStep::Finished);
    assert_eq!(
        k.form().notice.as_ref().map(|n| n.code),
        Some(NoticeCode::PinBlocked)
    );
    assert!(k.kiosk.session().is_some());
}

#[test]
fn without_the_badge_on_a_reader_the_change_asks_for_a_tap() {
    let mut k = Harness::with_policy(
        Flow::TapThenPin,
        SessionPolicy {
            sign_out_on_removal: false,
            ..SessionPolicy::default()
        },
    );
    k.sign_in(DESK, alice());
    k.remove(DESK);
    k.send(Event::ChangePinRequested);
    k.enter_value(ALICE_PIN);
    k.enter_value(NEW_PIN);
    let effects = k.enter_value(NEW_PIN);
    assert!(change_pin_effect(&effects).is_none());
    assert!(published(&effects).contains(&&SessionEvent::TapRequired));
    assert_eq!(k.form_step(), PinFormStep::TapBadge);
    assert_eq!(
        k.form().notice.as_ref().map(|n| n.code),
        Some(NoticeCode::TapBadge)
    );
    // The tap (on the NFC reader) is for the change: no user switch.
    let effects = k.tap(NFC);
    assert!(signed_out(&effects).is_none());
    let (reader, current, new) = change_pin_effect(&effects).unwrap();
    assert_eq!(reader, NFC);
    assert_eq!(current.as_bytes(), ALICE_PIN.as_bytes());
    assert_eq!(new.as_bytes(), NEW_PIN.as_bytes());
}

#[test]
fn a_badge_that_leaves_during_the_change_is_asked_for_again_with_the_pins_kept() {
    let mut k = Harness::with_policy(
        Flow::TapThenPin,
        SessionPolicy {
            sign_out_on_removal: false,
            ..SessionPolicy::default()
        },
    );
    k.reach_pin_change_work();
    k.remove(DESK);
    let effects = k.pin_work(Err(PinWorkFailure::CardRemoved));
    assert_eq!(
        form_failures(&effects),
        [(PinFormFailure::CardRemoved, None)]
    );
    assert!(published(&effects).contains(&&SessionEvent::TapRequired));
    assert_eq!(k.form_step(), PinFormStep::TapBadge);
    let effects = k.tap(DESK);
    let (reader, _, new) = change_pin_effect(&effects).unwrap();
    assert_eq!(reader, DESK);
    assert_eq!(new.as_bytes(), NEW_PIN.as_bytes());
    // Someone else's badge: asked for the right one.
    let effects = k.pin_work(Err(PinWorkFailure::OtherCard));
    assert_eq!(form_failures(&effects), [(PinFormFailure::OtherCard, None)]);
    assert_eq!(
        k.form().notice.as_ref().map(|n| n.code),
        Some(NoticeCode::OtherCard)
    );
    assert_eq!(k.form_step(), PinFormStep::TapBadge);
}

#[test]
fn removing_the_badge_mid_change_signs_out_when_that_policy_is_on() {
    let mut k = Harness::tap_then_pin();
    k.sign_in(DESK, alice());
    k.send(Event::ChangePinRequested);
    k.enter_value(ALICE_PIN);
    let effects = k.remove(DESK);
    assert_eq!(
        signed_out(&effects),
        Some(("u-alice", SignOutReason::CardRemoved))
    );
    assert!(k.kiosk.pin_form().is_none());
    assert!(k.kiosk.form_first.is_empty(), "the current PIN is wiped");
}

#[test]
fn a_tap_during_the_change_never_switches_users() {
    let mut k = Harness::tap_then_pin();
    k.sign_in(DESK, alice());
    k.send(Event::ChangePinRequested);
    k.type_digits("918");
    let effects = k.tap(NFC);
    assert!(signed_out(&effects).is_none());
    assert_eq!(k.form_step(), PinFormStep::CurrentPin);
    assert_eq!(k.form().digits, 3);
}

#[test]
fn escape_cancels_the_change_and_card_errors_end_it() {
    let mut k = Harness::tap_then_pin();
    k.sign_in(DESK, alice());
    k.send(Event::ChangePinRequested);
    k.enter_value(ALICE_PIN);
    k.type_digits("24");
    let effects = k.key(KeyInput::Escape);
    assert_eq!(form_failures(&effects), [(PinFormFailure::Cancelled, None)]);
    assert_eq!(k.form_step(), PinFormStep::Finished);
    assert!(k.kiosk.typed_pin.is_empty() && k.kiosk.form_first.is_empty());
    k.key(KeyInput::Escape);
    assert!(k.kiosk.pin_form().is_none());

    k.send(Event::ChangePinRequested);
    k.enter_value(ALICE_PIN);
    k.enter_value(NEW_PIN);
    k.enter_value(NEW_PIN);
    let effects = k.pin_work(Err(PinWorkFailure::CardError));
    assert_eq!(form_failures(&effects), [(PinFormFailure::CardError, None)]);
    assert_eq!(k.form_step(), PinFormStep::Finished);
}

#[test]
fn an_idle_change_and_a_card_that_never_answers_time_out() {
    let mut k = Harness::tap_then_pin();
    k.sign_in(DESK, alice());
    k.send(Event::ChangePinRequested);
    k.type_digits("91");
    let effects = k.wait(CoreConfig::default().pin_entry_timeout);
    assert_eq!(form_failures(&effects), [(PinFormFailure::TimedOut, None)]);
    assert!(k.kiosk.typed_pin.is_empty());
    k.key(KeyInput::Enter);

    k.send(Event::ChangePinRequested);
    k.enter_value(ALICE_PIN);
    k.enter_value(NEW_PIN);
    k.enter_value(NEW_PIN);
    let effects = k.wait(CoreConfig::default().work_timeout);
    assert!(cancels(&effects, DESK));
    assert_eq!(form_failures(&effects), [(PinFormFailure::TimedOut, None)]);
    // A late answer changes nothing.
    let late = k.pin_work(Ok(()));
    assert!(published(&late).is_empty());
}

#[test]
fn change_pin_is_only_for_a_signed_in_worker() {
    let mut k = Harness::tap_then_pin();
    assert!(without_ticks(k.send(Event::ChangePinRequested)).is_empty());
    k.reach_pin_entry(DESK);
    assert!(without_ticks(k.send(Event::ChangePinRequested)).is_empty());
    assert!(matches!(k.state(), State::PinEntry { .. }));
}

#[test]
fn pin_change_state_effects_and_events_never_show_a_pin() {
    let mut k = Harness::tap_then_pin();
    k.sign_in(DESK, alice());
    let mut everything = k.send(Event::ChangePinRequested);
    everything.extend(k.enter_value(ALICE_PIN));
    everything.extend(k.enter_value("345678"));
    everything.extend(k.enter_value(NEW_PIN));
    everything.extend(k.enter_value(NEW_PIN));
    let shown = format!("{:?} {everything:?} {:?}", k.state(), k.kiosk);
    for secret in [ALICE_PIN, NEW_PIN, "345678"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    for event in published(&everything) {
        let line = serde_json::to_string(event).unwrap();
        for secret in [ALICE_PIN, NEW_PIN, "345678"] {
            assert!(!line.contains(secret), "{line}");
        }
    }
}

// --- unblocking with the PUK ---

#[test]
fn a_blocked_badge_is_unblocked_with_the_puk_and_signs_in_next() {
    let mut k = Harness::tap_then_pin();
    k.tap(DESK);
    k.card_read(Some(0));
    let effects = k.send(Event::UnblockRequested);
    assert_eq!(
        published(&effects),
        [&SessionEvent::PukRequired { tries_left: None }]
    );
    assert_eq!(k.form().purpose, PinFormPurpose::Unblock);
    assert_eq!(k.form_step(), PinFormStep::Puk);
    let effects = k.enter_value(PUK);
    assert_eq!(
        published(&effects),
        [&SessionEvent::NewPinRequired { repeat: false }]
    );
    k.enter_value(NEW_PIN);
    let effects = k.enter_value(NEW_PIN);
    let (reader, puk, new_pin) = unblock_effect(&effects).expect("the card is asked");
    assert_eq!(reader, DESK);
    assert_eq!(puk.as_bytes(), PUK.as_bytes());
    assert_eq!(new_pin.as_bytes(), NEW_PIN.as_bytes());

    let effects = k.pin_work(Ok(()));
    assert!(published(&effects).contains(&&SessionEvent::CardUnblocked));
    // The badge is still there: read again, then the PIN prompt.
    assert!(
        effects
            .iter()
            .any(|effect| matches!(effect, Effect::ReadCard { reader, .. } if reader == DESK))
    );
    assert!(matches!(k.state(), State::ReadingCard { .. }));
    assert!(k.kiosk.form_first.is_empty() && k.kiosk.form_new.is_empty());
    k.card_read(Some(3));
    // The PIN prompt confirms the unblock.
    assert_eq!(k.notice_code(), Some(NoticeCode::CardUnblocked));
    assert!(k.notice().unwrap().message.contains("unblocked"));
    k.enter_value(NEW_PIN);
    assert!(matches!(k.state(), State::Working { .. }));
}

#[test]
fn pin_then_tap_after_an_unblock_asks_for_the_new_pin_first() {
    let mut k = Harness::pin_then_tap();
    k.type_digits(ALICE_PIN);
    k.tap(DESK);
    k.card_read(Some(3));
    k.fail(AuthFailure::PinBlocked);
    assert!(matches!(k.state(), State::PinBlocked { .. }));
    k.send(Event::UnblockRequested);
    k.enter_value(PUK);
    k.enter_value(NEW_PIN);
    k.enter_value(NEW_PIN);
    let effects = k.pin_work(Ok(()));
    assert!(published(&effects).contains(&&SessionEvent::CardUnblocked));
    assert_eq!(k.notice_code(), Some(NoticeCode::CardUnblocked));
    assert!(matches!(k.state(), State::WaitingForCard { .. }));
}

#[test]
fn a_wrong_puk_shows_the_tries_left_and_a_blocked_puk_ends_the_unblock() {
    let mut k = Harness::tap_then_pin();
    k.reach_unblock_work();
    let effects = k.pin_work(Err(PinWorkFailure::WrongPuk {
        tries_left: Some(1),
    }));
    assert_eq!(
        form_failures(&effects),
        [(PinFormFailure::WrongPuk, Some(1))]
    );
    assert!(published(&effects).contains(&&SessionEvent::PukRequired {
        tries_left: Some(1)
    }));
    assert_eq!(k.form_step(), PinFormStep::Puk);
    assert_eq!(k.form().tries_left, Some(1));
    assert_eq!(
        k.form().notice.as_ref().map(|n| n.code),
        Some(NoticeCode::WrongPuk)
    );
    k.enter_value("87654321");
    k.enter_value(NEW_PIN);
    k.enter_value(NEW_PIN);
    let effects = k.pin_work(Err(PinWorkFailure::PukBlocked));
    assert_eq!(
        form_failures(&effects),
        [(PinFormFailure::PukBlocked, None)]
    );
    assert!(k.kiosk.pin_form().is_none());
    assert_eq!(k.notice_code(), Some(NoticeCode::PukBlocked));
    assert!(matches!(k.state(), State::PinBlocked { .. }));
    // Removing the badge now returns to waiting, as before.
    k.remove(DESK);
    assert!(matches!(k.state(), State::WaitingForCard { .. }));
}

#[test]
fn unblock_checks_the_puk_length_and_the_pin_policy_before_the_card() {
    let mut k = Harness::tap_then_pin();
    k.tap(DESK);
    k.card_read(Some(0));
    k.send(Event::UnblockRequested);
    k.enter_value("1234");
    assert_eq!(k.form_step(), PinFormStep::Puk);
    assert_eq!(
        k.form().notice.as_ref().map(|n| n.code),
        Some(NoticeCode::PinTooShort)
    );
    k.enter_value("5678");
    k.key(KeyInput::Backspace);
    k.key(KeyInput::Backspace);
    k.key(KeyInput::Backspace);
    k.key(KeyInput::Backspace);
    k.key(KeyInput::Backspace);
    k.key(KeyInput::Backspace);
    k.key(KeyInput::Backspace);
    k.key(KeyInput::Backspace);
    assert_eq!(k.form().digits, 0);
    k.enter_value(PUK);
    let effects = k.enter_value("987654");
    assert_eq!(form_failures(&effects), [(PinFormFailure::Policy, None)]);
    assert!(unblock_effect(&effects).is_none());
    assert_eq!(k.form_step(), PinFormStep::NewPin);
}

#[test]
fn a_badge_that_leaves_during_the_unblock_is_asked_for_again() {
    let mut k = Harness::tap_then_pin();
    k.tap(DESK);
    k.card_read(Some(0));
    k.send(Event::UnblockRequested);
    k.enter_value(PUK);
    k.remove(DESK);
    assert!(
        matches!(
            k.state(),
            State::PinBlocked {
                unblock: Some(_),
                ..
            }
        ),
        "the unblock outlives the badge"
    );
    k.enter_value(NEW_PIN);
    let effects = k.enter_value(NEW_PIN);
    assert!(unblock_effect(&effects).is_none());
    assert!(published(&effects).contains(&&SessionEvent::TapRequired));
    let effects = k.tap(DESK);
    let (reader, puk, _) = unblock_effect(&effects).unwrap();
    assert_eq!(reader, DESK);
    assert_eq!(puk.as_bytes(), PUK.as_bytes());
}

#[test]
fn escape_or_a_time_out_leaves_the_badge_blocked() {
    let mut k = Harness::tap_then_pin();
    k.tap(DESK);
    k.card_read(Some(0));
    k.send(Event::UnblockRequested);
    k.type_digits("1234");
    let effects = k.key(KeyInput::Escape);
    assert_eq!(form_failures(&effects), [(PinFormFailure::Cancelled, None)]);
    assert!(matches!(k.state(), State::PinBlocked { unblock: None, .. }));
    assert!(k.kiosk.typed_pin.is_empty());

    k.send(Event::UnblockRequested);
    k.enter_value(PUK);
    k.remove(DESK);
    let effects = k.wait(CoreConfig::default().pin_entry_timeout);
    assert_eq!(form_failures(&effects), [(PinFormFailure::TimedOut, None)]);
    assert!(k.kiosk.form_first.is_empty());
    // The badge left meanwhile: back to waiting, saying why.
    assert_eq!(k.notice_code(), Some(NoticeCode::TimedOut));
    assert!(matches!(k.state(), State::WaitingForCard { .. }));
}

#[test]
fn unblock_is_only_offered_on_the_blocked_screen() {
    let mut k = Harness::tap_then_pin();
    assert!(without_ticks(k.send(Event::UnblockRequested)).is_empty());
    k.sign_in(DESK, alice());
    assert!(without_ticks(k.send(Event::UnblockRequested)).is_empty());
    assert!(k.kiosk.pin_form().is_none());
}

#[test]
fn pin_form_events_read_as_documented() {
    let failed = SessionEvent::PinChangeFailed {
        reason: PinFormFailure::WrongPin,
        message: "Wrong current PIN.".to_owned(),
        tries_left: Some(2),
    };
    assert_eq!(
        serde_json::to_string(&failed).unwrap(),
        r#"{"event":"pin_change_failed","reason":"wrong_pin","message":"Wrong current PIN.","tries_left":2}"#
    );
    assert_eq!(
        serde_json::to_string(&SessionEvent::NewPinRequired { repeat: true }).unwrap(),
        r#"{"event":"new_pin_required","repeat":true}"#
    );
    assert_eq!(
        serde_json::to_string(&SessionEvent::CardUnblocked).unwrap(),
        r#"{"event":"card_unblocked"}"#
    );
    assert_eq!(
        serde_json::to_string(&SessionEvent::CurrentPinRequired { tries_left: None }).unwrap(),
        r#"{"event":"current_pin_required"}"#
    );
    assert_eq!(
        serde_json::to_string(&SessionEvent::PukRequired {
            tries_left: Some(2)
        })
        .unwrap(),
        r#"{"event":"puk_required","tries_left":2}"#
    );
    let unblock = SessionEvent::UnblockFailed {
        reason: PinFormFailure::PukBlocked,
        message: "blocked".to_owned(),
        tries_left: None,
    };
    assert_eq!(
        serde_json::to_string(&unblock).unwrap(),
        r#"{"event":"unblock_failed","reason":"puk_blocked","message":"blocked"}"#
    );
    for event in [
        failed,
        unblock,
        SessionEvent::PinChanged,
        SessionEvent::TapRequired,
    ] {
        let line = serde_json::to_string(&event).unwrap();
        assert_eq!(serde_json::from_str::<SessionEvent>(&line).unwrap(), event);
    }
}

// --- random event sequences ---

/// What to generate: plain events, a whole PIN typed, or results that name recent work
/// (`back` = 0 is the latest) so they often apply.
#[derive(Debug, Clone)]
enum Generated {
    Event(Event),
    TypePin {
        digits: usize,
        enter: bool,
    },
    CardRead {
        back: u64,
        tries: Option<u8>,
    },
    CardReadFailed {
        back: u64,
        failure: CardReadFailure,
    },
    AuthProgress {
        back: u64,
        step: Step,
    },
    AuthSucceeded {
        back: u64,
        lifetime: i64,
    },
    AuthFailed {
        back: u64,
        failure: AuthFailure,
    },
    TypeDigits {
        digits: Vec<u8>,
        enter: bool,
    },
    PinWorkDone {
        back: u64,
        result: Result<(), PinWorkFailure>,
    },
}

impl Generated {
    fn into_events(self, last_work: u64) -> Vec<Event> {
        let work = |back: u64| WorkId(last_work.saturating_sub(back));
        let event = match self {
            Generated::Event(event) => event,
            Generated::TypePin { digits, enter } => {
                return (0..digits)
                    .map(|digit| Event::Key(KeyInput::Digit((digit % 10) as u8)))
                    .chain(enter.then_some(Event::Key(KeyInput::Enter)))
                    .collect();
            }
            Generated::CardRead { back, tries } => Event::CardRead {
                work: work(back),
                card: alice_card(),
                pin_tries_left: tries,
            },
            Generated::CardReadFailed { back, failure } => Event::CardReadFailed {
                work: work(back),
                failure,
            },
            Generated::AuthProgress { back, step } => Event::AuthProgress {
                work: work(back),
                step,
            },
            Generated::AuthSucceeded { back, lifetime } => Event::AuthSucceeded {
                work: work(back),
                user: alice(),
                signed_in_at: signed_in_at(),
                expires_at: signed_in_at() + time::Duration::seconds(lifetime),
            },
            Generated::AuthFailed { back, failure } => Event::AuthFailed {
                work: work(back),
                failure,
            },
            Generated::TypeDigits { digits, enter } => {
                return digits
                    .into_iter()
                    .map(|digit| Event::Key(KeyInput::Digit(digit)))
                    .chain(enter.then_some(Event::Key(KeyInput::Enter)))
                    .collect();
            }
            Generated::PinWorkDone { back, result } => Event::PinWorkDone {
                work: work(back),
                result,
            },
        };
        vec![event]
    }
}

fn reader() -> impl Strategy<Value = String> {
    prop::sample::select(vec![DESK.to_owned(), NFC.to_owned()])
}

/// Mostly the latest work, sometimes an older one.
fn back() -> impl Strategy<Value = u64> {
    prop_oneof![6 => Just(0u64), 1 => 1..3u64]
}

fn key() -> impl Strategy<Value = KeyInput> {
    prop_oneof![
        (0..12u8).prop_map(KeyInput::Digit),
        Just(KeyInput::Backspace),
        Just(KeyInput::Enter),
        Just(KeyInput::Escape),
        Just(KeyInput::Other),
    ]
}

fn card_read_failure() -> impl Strategy<Value = CardReadFailure> {
    prop_oneof![
        Just(CardReadFailure::CardRemoved),
        Just(CardReadFailure::NotPiv),
        Just(CardReadFailure::Unreadable),
    ]
}

fn auth_failure() -> impl Strategy<Value = AuthFailure> {
    prop_oneof![
        proptest::option::of(0..4u8).prop_map(|tries_left| AuthFailure::WrongPin { tries_left }),
        Just(AuthFailure::PinBlocked),
        Just(AuthFailure::CardRemoved),
        Just(AuthFailure::CardError),
        Just(AuthFailure::ServerUnreachable),
        Just(AuthFailure::ServerUntrusted),
        Just(AuthFailure::ServerRefused {
            code: ErrorCode::UserLocked
        }),
    ]
}

fn pin_work_result() -> impl Strategy<Value = Result<(), PinWorkFailure>> {
    prop_oneof![
        3 => Just(Ok(())),
        1 => proptest::option::of(0..3u8).prop_map(|tries_left| Err(PinWorkFailure::WrongPin { tries_left })),
        1 => Just(Err(PinWorkFailure::PinBlocked)),
        1 => proptest::option::of(0..3u8).prop_map(|tries_left| Err(PinWorkFailure::WrongPuk { tries_left })),
        1 => Just(Err(PinWorkFailure::PukBlocked)),
        1 => Just(Err(PinWorkFailure::CardRemoved)),
        1 => Just(Err(PinWorkFailure::OtherCard)),
        1 => Just(Err(PinWorkFailure::CardError)),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        Just(Step::Verifying),
        Just(Step::Signing),
        Just(Step::SigningIn)
    ]
}

fn generated() -> impl Strategy<Value = Generated> {
    let event = |event: Event| Just(Generated::Event(event));
    prop_oneof![
        1 => reader().prop_map(|reader| Generated::Event(Event::ReaderAdded { reader })),
        1 => reader().prop_map(|reader| Generated::Event(Event::ReaderRemoved { reader })),
        1 => event(Event::ReaderServiceLost),
        1 => event(Event::ReaderServiceRestored),
        4 => reader().prop_map(|reader| Generated::Event(Event::CardPresent { reader })),
        3 => reader().prop_map(|reader| Generated::Event(Event::CardRemoved { reader })),
        6 => key().prop_map(|key| Generated::Event(Event::Key(key))),
        4 => (0..10usize, any::<bool>())
            .prop_map(|(digits, enter)| Generated::TypePin { digits, enter }),
        1 => event(Event::SignOutRequested),
        1 => event(Event::SessionEndedAtServer { reason: Some(SessionEndReason::CardLocked) }),
        1 => event(Event::Shutdown),
        1 => event(Event::ServerReachable),
        1 => event(Event::ServerUnreachable),
        1 => event(Event::ServerUntrusted),
        1 => event(Event::ReaderFilteredOut {
            reader: "Other Reader".to_owned()
        }),
        1 => event(Event::ServerRefusing {
            code: ErrorCode::DeviceUnknown
        }),
        2 => event(Event::Tick),
        4 => (back(), prop::option::of(0..4u8))
            .prop_map(|(back, tries)| Generated::CardRead { back, tries }),
        1 => (back(), card_read_failure())
            .prop_map(|(back, failure)| Generated::CardReadFailed { back, failure }),
        1 => (back(), step()).prop_map(|(back, step)| Generated::AuthProgress { back, step }),
        4 => (back(), -100..100_000i64)
            .prop_map(|(back, lifetime)| Generated::AuthSucceeded { back, lifetime }),
        3 => (back(), auth_failure())
            .prop_map(|(back, failure)| Generated::AuthFailed { back, failure }),
        2 => event(Event::ChangePinRequested),
        2 => event(Event::UnblockRequested),
        4 => (prop::collection::vec(0..10u8, 0..10), any::<bool>())
            .prop_map(|(digits, enter)| Generated::TypeDigits { digits, enter }),
        3 => (back(), pin_work_result())
            .prop_map(|(back, result)| Generated::PinWorkDone { back, result }),
    ]
}

/// Mostly moments apart, sometimes long enough for time-outs.
fn pause() -> impl Strategy<Value = Duration> {
    prop_oneof![
        8 => (0..2_000u64).prop_map(Duration::from_millis),
        1 => (0..1_200u64).prop_map(Duration::from_secs),
    ]
}

fn config() -> impl Strategy<Value = CoreConfig> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        prop::option::of(0..2000u64),
    )
        .prop_map(
            |(pin_first, sign_out_on_removal, fast_user_switch, idle)| CoreConfig {
                flow: if pin_first {
                    Flow::PinThenTap
                } else {
                    Flow::TapThenPin
                },
                session: SessionPolicy {
                    sign_out_on_removal,
                    idle_timeout: idle.map(Duration::from_secs),
                    fast_user_switch,
                    ..SessionPolicy::default()
                },
                ..CoreConfig::default()
            },
        )
}

/// The digits on show, if the state shows a PIN being typed.
fn shown_digits(state: &State) -> Option<usize> {
    match state {
        State::PinEntry { prompt, .. }
        | State::PinFirst { prompt }
        | State::SignedIn {
            next_worker: Some(prompt),
            ..
        } => Some(prompt.digits),
        State::SignedIn {
            pin_change: Some(form),
            ..
        }
        | State::PinBlocked {
            unblock: Some(form),
            ..
        } => Some(form.digits),
        _ => None,
    }
}

/// What the property test remembers between events.
#[derive(Default)]
struct Observer {
    session_open: bool,
}

impl Observer {
    /// Checks one event's outcome against the invariants.
    fn check(
        &mut self,
        kiosk: &Kiosk,
        event_was_auth_success: bool,
        was_signed_in: bool,
        effects: &[Effect],
        now: Instant,
    ) -> Result<(), TestCaseError> {
        // The typed PIN is bounded, all digits, and exactly what the state shows.
        prop_assert!(kiosk.typed_pin.len() <= PIN_MAX_DIGITS);
        prop_assert!(kiosk.typed_pin.bytes().all(|b| b.is_ascii_digit()));
        prop_assert_eq!(
            shown_digits(kiosk.state()).unwrap_or(0),
            kiosk.typed_pin.len()
        );
        let mut signed_out_now = false;
        for effect in effects {
            match effect {
                Effect::Authenticate { pin, .. } => {
                    let digits = pin.as_bytes().len();
                    prop_assert!((PIN_MIN_DIGITS..=PIN_MAX_DIGITS).contains(&digits));
                }
                // New PINs reach the card only once the policy allowed them.
                Effect::ChangePin { current, new, .. } => {
                    let signed_in = matches!(kiosk.state(), State::SignedIn { .. });
                    prop_assert!(signed_in, "a PIN change without a session");
                    let (current, new) = (
                        std::str::from_utf8(current.as_bytes()).unwrap(),
                        std::str::from_utf8(new.as_bytes()).unwrap(),
                    );
                    prop_assert!(kiosk.config().pin_policy.check_change(current, new).is_ok());
                }
                Effect::UnblockPin { new_pin, .. } => {
                    let blocked = matches!(kiosk.state(), State::PinBlocked { .. });
                    prop_assert!(blocked, "an unblock off the blocked screen");
                    let new_pin = std::str::from_utf8(new_pin.as_bytes()).unwrap();
                    prop_assert!(kiosk.config().pin_policy.check(new_pin).is_ok());
                }
                Effect::Publish(SessionEvent::SignedIn { .. }) => {
                    prop_assert!(event_was_auth_success, "signed in without AuthSucceeded");
                    prop_assert!(!self.session_open);
                    self.session_open = true;
                }
                Effect::Publish(SessionEvent::SignedOut { .. }) => {
                    prop_assert!(self.session_open, "signed out without a session");
                    self.session_open = false;
                    signed_out_now = true;
                }
                Effect::DropSession => prop_assert!(signed_out_now, "dropped without signing out"),
                Effect::ScheduleTick { at } => prop_assert!(*at > now),
                _ => {}
            }
        }
        // A PIN taken from the typing buffer waits only for the read of the badge it is for.
        if kiosk.pin_awaiting_read.is_some() {
            let reading = matches!(kiosk.state(), State::ReadingCard { .. });
            prop_assert!(reading, "a held PIN outside the badge's read");
        }
        // The values of a PIN change or unblock are held only while one is under way.
        if !kiosk.pin_form_active() {
            prop_assert!(kiosk.form_first.is_empty() && kiosk.form_new.is_empty());
        }
        // A worker waiting for a fast user switch is still signed in.
        let signed_in =
            matches!(kiosk.state(), State::SignedIn { .. }) || kiosk.switching_from().is_some();
        prop_assert_eq!(signed_in, self.session_open);
        if signed_in && !was_signed_in {
            prop_assert!(event_was_auth_success);
        }
        let state = kiosk.state();
        if kiosk.readers().is_empty() {
            prop_assert!(
                matches!(state, State::ReaderMissing { .. } | State::SignedIn { .. }),
                "no reader, yet {:?}",
                state
            );
        } else {
            prop_assert!(
                !matches!(state, State::ReaderMissing { .. }),
                "readers, yet reader missing"
            );
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_event_sequences_keep_the_invariants(
        config in config(),
        steps in prop::collection::vec((generated(), pause()), 1..150),
    ) {
        let mut kiosk = Kiosk::new(config);
        let mut now = Instant::now();
        let mut observer = Observer::default();
        for (generated, pause) in steps {
            now += pause;
            for event in generated.into_events(kiosk.last_work) {
                let event_was_auth_success = matches!(event, Event::AuthSucceeded { .. });
                let was_signed_in = matches!(kiosk.state(), State::SignedIn { .. })
                    || kiosk.switching_from().is_some();
                let effects = kiosk.handle_event(event, now);
                observer.check(&kiosk, event_was_auth_success, was_signed_in, &effects, now)?;
            }
        }
    }
}
