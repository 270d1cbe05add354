//! The administrator's way out of the production kiosk: a configured key sequence, then the exit passcode, checked against its Argon2id hash from `kiosk.toml`.
//!
//! Workers cannot quit the kiosk: `q` and Ctrl-C do nothing there. An administrator presses
//! `[admin] exit_keys` (default `ctrl-alt-x`) and types the passcode whose hash
//! `pivtap kiosk set-exit-passcode` wrote to `[admin] exit_passcode_hash`. Without a hash only
//! a signal (SIGTERM, SIGINT, SIGHUP from the service manager) stops the kiosk, and the screen
//! says so when the key sequence is pressed. Wrong passcodes make the next try wait longer.
//!
//! [`ExitGate`] is pure (the time comes in with each key); the terminal face feeds it every key
//! before the kiosk sees it and draws its [`ExitScreen`] over the kiosk's message.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use zeroize::Zeroizing;

/// The key sequence used when `[admin] exit_keys` is not set.
pub const DEFAULT_EXIT_KEYS: &str = "ctrl-alt-x";
/// The fewest characters an exit passcode has.
pub const PASSCODE_MIN_CHARS: usize = 8;
/// The most characters an exit passcode has (further typing is ignored).
pub const PASSCODE_MAX_CHARS: usize = 128;
/// The most keys in a sequence.
const MAX_SEQUENCE: usize = 8;
/// The keys of a sequence must follow each other within this time.
const SEQUENCE_WINDOW: Duration = Duration::from_secs(3);
/// The passcode prompt closes after this long without a key.
const PROMPT_IDLE: Duration = Duration::from_secs(30);
/// How long a message (no passcode set, wrong passcode) stays.
const MESSAGE_TIME: Duration = Duration::from_secs(8);
/// The pause after the first wrong passcode; it doubles with each one, up to [`LONGEST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_secs(5);
/// The longest pause after wrong passcodes.
const LONGEST_PAUSE: Duration = Duration::from_secs(300);

/// Why an exit key sequence or passcode hash is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdminExitError {
    /// The sequence has no keys, or too many.
    #[error(
        "give 1 to {MAX_SEQUENCE} keys separated by spaces, such as \"ctrl-alt-x\" or \"f10 f10 f10\""
    )]
    SequenceLength,
    /// A key name is not known.
    #[error(
        "unknown key {0:?}: use a letter, digit or f1 to f12, with ctrl-, alt- or shift- before it"
    )]
    UnknownKey(String),
    /// A key a worker types anyway (a digit, a letter, Enter...) would start the sequence.
    #[error("{0:?} is typed by workers: each key must be f1 to f12 or be held with ctrl or alt")]
    PlainKey(String),
    /// The passcode hash is not an Argon2id PHC string.
    #[error("not an Argon2id hash ($argon2id$...); write it with `pivtap kiosk set-exit-passcode`")]
    NotArgon2id,
    /// The passcode is too short or too long.
    #[error("the exit passcode has {PASSCODE_MIN_CHARS} to {PASSCODE_MAX_CHARS} characters")]
    PasscodeLength,
    /// Hashing failed.
    #[error("cannot hash the exit passcode")]
    Hashing,
}

/// One key press of a sequence: a key and the modifiers held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct KeyChord {
    code: KeyCode,
    control: bool,
    alt: bool,
    shift: bool,
}

impl KeyChord {
    fn matches(&self, event: &KeyEvent) -> bool {
        let code = match event.code {
            KeyCode::Char(c) => KeyCode::Char(c.to_ascii_lowercase()),
            other => other,
        };
        let shift_matches = match self.code {
            // Terminals differ in whether Shift shows with a letter; the letter case says enough.
            KeyCode::Char(_) => true,
            _ => self.shift == event.modifiers.contains(KeyModifiers::SHIFT),
        };
        code == self.code
            && self.control == event.modifiers.contains(KeyModifiers::CONTROL)
            && self.alt == event.modifiers.contains(KeyModifiers::ALT)
            && shift_matches
    }
}

impl FromStr for KeyChord {
    type Err = AdminExitError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let lower = text.to_ascii_lowercase();
        let mut parts: Vec<&str> = lower.split('-').collect();
        let key = parts.pop().unwrap_or_default();
        let (mut control, mut alt, mut shift) = (false, false, false);
        for modifier in parts {
            match modifier {
                "ctrl" | "control" | "c" => control = true,
                "alt" | "meta" | "m" => alt = true,
                "shift" | "s" => shift = true,
                _ => return Err(AdminExitError::UnknownKey(text.to_owned())),
            }
        }
        let code = match key {
            "esc" | "escape" => KeyCode::Esc,
            "enter" | "return" => KeyCode::Enter,
            "tab" => KeyCode::Tab,
            "backspace" => KeyCode::Backspace,
            "delete" | "del" => KeyCode::Delete,
            "insert" | "ins" => KeyCode::Insert,
            "home" => KeyCode::Home,
            "end" => KeyCode::End,
            "pageup" => KeyCode::PageUp,
            "pagedown" => KeyCode::PageDown,
            "up" => KeyCode::Up,
            "down" => KeyCode::Down,
            "left" => KeyCode::Left,
            "right" => KeyCode::Right,
            "space" => KeyCode::Char(' '),
            function if function.len() > 1 && function.starts_with('f') => function[1..]
                .parse::<u8>()
                .ok()
                .filter(|number| (1..=12).contains(number))
                .map(KeyCode::F)
                .ok_or_else(|| AdminExitError::UnknownKey(text.to_owned()))?,
            single if single.chars().count() == 1 => {
                let c = single.chars().next().unwrap_or(' ');
                if !c.is_ascii_graphic() {
                    return Err(AdminExitError::UnknownKey(text.to_owned()));
                }
                KeyCode::Char(c)
            }
            _ => return Err(AdminExitError::UnknownKey(text.to_owned())),
        };
        if !matches!(code, KeyCode::F(_)) && !control && !alt {
            return Err(AdminExitError::PlainKey(text.to_owned()));
        }
        Ok(KeyChord {
            code,
            control,
            alt,
            shift,
        })
    }
}

/// The key sequence that opens the administrator's exit (`[admin] exit_keys`): key names
/// separated by spaces, each `f1`..`f12` or held with `ctrl-` or `alt-` (`"ctrl-alt-x"`,
/// `"f10 f10 f10"`), pressed within 3 s of each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitKeys {
    chords: Vec<KeyChord>,
    text: String,
}

impl FromStr for ExitKeys {
    type Err = AdminExitError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let chords = text
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<Vec<KeyChord>, _>>()?;
        if chords.is_empty() || chords.len() > MAX_SEQUENCE {
            return Err(AdminExitError::SequenceLength);
        }
        Ok(ExitKeys {
            chords,
            text: text.split_whitespace().collect::<Vec<_>>().join(" "),
        })
    }
}

impl Default for ExitKeys {
    fn default() -> Self {
        DEFAULT_EXIT_KEYS
            .parse()
            .unwrap_or_else(|_| unreachable!("the default exit keys parse"))
    }
}

impl fmt::Display for ExitKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// An exit passcode's Argon2id hash, as a PHC string (`$argon2id$v=19$m=...`). It never holds
/// the passcode; `Debug` shows only that it is set.
#[derive(Clone, PartialEq, Eq)]
pub struct ExitPasscodeHash(String);

impl ExitPasscodeHash {
    /// Checks a PHC string from `kiosk.toml`.
    ///
    /// # Errors
    /// [`AdminExitError::NotArgon2id`].
    pub fn parse(text: &str) -> Result<Self, AdminExitError> {
        let text = text.trim();
        let hash = PasswordHash::new(text).map_err(|_| AdminExitError::NotArgon2id)?;
        if hash.algorithm != argon2::ARGON2ID_IDENT || hash.hash.is_none() || hash.salt.is_none() {
            return Err(AdminExitError::NotArgon2id);
        }
        Ok(ExitPasscodeHash(text.to_owned()))
    }

    /// Hashes a new passcode with Argon2id (default parameters, a random salt).
    ///
    /// # Errors
    /// [`AdminExitError::PasscodeLength`] or [`AdminExitError::Hashing`].
    pub fn new(passcode: &str) -> Result<Self, AdminExitError> {
        if !(PASSCODE_MIN_CHARS..=PASSCODE_MAX_CHARS).contains(&passcode.chars().count()) {
            return Err(AdminExitError::PasscodeLength);
        }
        let hash = Argon2::default()
            .hash_password(passcode.as_bytes())
            .map_err(|_| AdminExitError::Hashing)?;
        Ok(ExitPasscodeHash(hash.to_string()))
    }

    /// Whether `passcode` is the one hashed.
    #[must_use]
    pub fn verify(&self, passcode: &str) -> bool {
        PasswordHash::new(&self.0).is_ok_and(|hash| {
            Argon2::default()
                .verify_password(passcode.as_bytes(), &hash)
                .is_ok()
        })
    }

    /// The PHC string, for `kiosk.toml`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ExitPasscodeHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ExitPasscodeHash(argon2id)")
    }
}

/// What the administrator's exit shows over the kiosk's message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitScreen {
    /// Asking for the passcode: how many characters are typed.
    Passcode {
        /// Characters typed so far.
        typed: usize,
    },
    /// No passcode is configured: only a signal stops the kiosk.
    NoPasscode,
    /// The passcode was wrong (or tried too soon): the next try waits until `retry_at`.
    Wrong {
        /// No new try before this.
        retry_at: Instant,
    },
}

/// What became of a key given to [`ExitGate::key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateOutcome {
    /// Not the gate's: the kiosk handles it.
    Pass,
    /// The gate used it (part of the sequence, or passcode typing): redraw.
    Used,
    /// The right passcode: stop the kiosk.
    Exit,
}

/// The administrator's exit: watches the keys for the sequence, then takes the passcode.
pub struct ExitGate {
    keys: ExitKeys,
    hash: Option<ExitPasscodeHash>,
    /// Keys of the sequence matched so far, and when the last one came.
    matched: usize,
    last_match: Option<Instant>,
    /// What is shown, until when.
    screen: Option<(ExitScreen, Instant)>,
    typed: Zeroizing<String>,
    wrong_in_a_row: u32,
    retry_at: Option<Instant>,
}

impl ExitGate {
    /// A gate for `keys`; with no `hash`, the sequence only says that a signal stops the kiosk.
    #[must_use]
    pub fn new(keys: ExitKeys, hash: Option<ExitPasscodeHash>) -> Self {
        ExitGate {
            keys,
            hash,
            matched: 0,
            last_match: None,
            screen: None,
            typed: Zeroizing::new(String::with_capacity(PASSCODE_MAX_CHARS * 4)),
            wrong_in_a_row: 0,
            retry_at: None,
        }
    }

    /// What to show over the kiosk at `now`, if anything.
    #[must_use]
    pub fn screen(&self, now: Instant) -> Option<ExitScreen> {
        self.screen
            .filter(|(_, until)| *until > now)
            .map(|(screen, _)| screen)
    }

    /// Takes one key event at `now`.
    pub fn key(&mut self, event: &KeyEvent, now: Instant) -> GateOutcome {
        if event.kind != KeyEventKind::Press {
            return GateOutcome::Pass;
        }
        if self.screen(now).is_none() {
            self.close();
        }
        if let Some((ExitScreen::Passcode { .. }, _)) = self.screen {
            return self.passcode_key(event, now);
        }
        let in_time = self
            .last_match
            .is_some_and(|at| now.saturating_duration_since(at) <= SEQUENCE_WINDOW);
        if !in_time {
            self.matched = 0;
        }
        if !self.keys.chords[self.matched].matches(event) {
            self.matched = 0;
            if !self.keys.chords[0].matches(event) {
                return GateOutcome::Pass;
            }
        }
        self.matched += 1;
        self.last_match = Some(now);
        if self.matched == self.keys.chords.len() {
            self.matched = 0;
            self.last_match = None;
            self.open(now);
        }
        GateOutcome::Used
    }

    fn open(&mut self, now: Instant) {
        self.typed.clear();
        self.screen = Some(match (&self.hash, self.retry_at.filter(|at| *at > now)) {
            (None, _) => (ExitScreen::NoPasscode, now + MESSAGE_TIME),
            (Some(_), Some(retry_at)) => (ExitScreen::Wrong { retry_at }, retry_at),
            (Some(_), None) => (ExitScreen::Passcode { typed: 0 }, now + PROMPT_IDLE),
        });
    }

    fn close(&mut self) {
        self.screen = None;
        self.typed.clear();
    }

    fn passcode_key(&mut self, event: &KeyEvent, now: Instant) -> GateOutcome {
        let modified = event
            .modifiers
            .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT);
        match event.code {
            KeyCode::Esc => {
                self.close();
                return GateOutcome::Used;
            }
            KeyCode::Enter => return self.submit(now),
            KeyCode::Backspace => {
                self.typed.pop();
            }
            KeyCode::Char(c) if !modified && self.typed.chars().count() < PASSCODE_MAX_CHARS => {
                self.typed.push(c);
            }
            _ => {}
        }
        let typed = self.typed.chars().count();
        self.screen = Some((ExitScreen::Passcode { typed }, now + PROMPT_IDLE));
        GateOutcome::Used
    }

    fn submit(&mut self, now: Instant) -> GateOutcome {
        let right = self
            .hash
            .as_ref()
            .is_some_and(|hash| hash.verify(&self.typed));
        self.typed.clear();
        if right {
            self.screen = None;
            self.wrong_in_a_row = 0;
            return GateOutcome::Exit;
        }
        self.wrong_in_a_row = self.wrong_in_a_row.saturating_add(1);
        let doublings = self.wrong_in_a_row.saturating_sub(1).min(16);
        let pause = FIRST_PAUSE
            .saturating_mul(1 << doublings)
            .min(LONGEST_PAUSE);
        let retry_at = now + pause;
        self.retry_at = Some(retry_at);
        self.screen = Some((
            ExitScreen::Wrong { retry_at },
            now + MESSAGE_TIME.max(pause),
        ));
        tracing::info!(
            target: "pivtap::kiosk",
            wrong_in_a_row = self.wrong_in_a_row,
            "administrator exit: wrong passcode"
        );
        GateOutcome::Used
    }
}

impl fmt::Debug for ExitGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExitGate")
            .field("keys", &self.keys)
            .field("passcode_set", &self.hash.is_some())
            .field("screen", &self.screen)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn press(code: KeyCode, modifiers: KeyModifiers) -> KeyEvent {
        KeyEvent::new(code, modifiers)
    }

    fn chars(gate: &mut ExitGate, text: &str, now: Instant) {
        for c in text.chars() {
            assert_eq!(
                gate.key(&press(KeyCode::Char(c), KeyModifiers::NONE), now),
                GateOutcome::Used
            );
        }
    }

    /// A cheap hash for tests (the real one uses Argon2's defaults).
    fn test_hash(passcode: &str) -> ExitPasscodeHash {
        let params = argon2::Params::new(8, 1, 1, None).unwrap();
        let argon = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let hash = argon.hash_password(passcode.as_bytes()).unwrap();
        ExitPasscodeHash::parse(&hash.to_string()).unwrap()
    }

    const CTRL_ALT: KeyModifiers = KeyModifiers::CONTROL.union(KeyModifiers::ALT);

    #[test]
    fn key_sequences_parse_and_refuse_keys_workers_type() {
        let keys: ExitKeys = " ctrl-alt-x ".parse().unwrap();
        assert_eq!(keys.to_string(), "ctrl-alt-x");
        assert_eq!(keys, ExitKeys::default());
        let keys: ExitKeys = "F10 f10  f10".parse().unwrap();
        assert_eq!(keys.chords.len(), 3);
        assert_eq!(keys.to_string(), "F10 f10 f10");
        assert!("alt-shift-q ctrl-home".parse::<ExitKeys>().is_ok());
        for (text, error) in [
            ("", AdminExitError::SequenceLength),
            ("f1 f1 f1 f1 f1 f1 f1 f1 f1", AdminExitError::SequenceLength),
            ("q", AdminExitError::PlainKey("q".to_owned())),
            ("shift-x", AdminExitError::PlainKey("shift-x".to_owned())),
            ("enter", AdminExitError::PlainKey("enter".to_owned())),
            ("f13", AdminExitError::UnknownKey("f13".to_owned())),
            ("hyper-x", AdminExitError::UnknownKey("hyper-x".to_owned())),
            ("ctrl-xy", AdminExitError::UnknownKey("ctrl-xy".to_owned())),
        ] {
            assert_eq!(text.parse::<ExitKeys>(), Err(error), "{text:?}");
        }
    }

    #[test]
    fn the_passcode_hash_must_be_argon2id_and_verifies_only_its_passcode() {
        let hash = ExitPasscodeHash::new("correct horse").unwrap();
        assert!(hash.as_str().starts_with("$argon2id$"));
        assert!(hash.verify("correct horse"));
        assert!(!hash.verify("correct hors"));
        assert_eq!(format!("{hash:?}"), "ExitPasscodeHash(argon2id)");
        assert_eq!(
            ExitPasscodeHash::parse(hash.as_str()).unwrap().as_str(),
            hash.as_str()
        );
        assert_eq!(
            ExitPasscodeHash::new("short"),
            Err(AdminExitError::PasscodeLength)
        );
        for bad in [
            "",
            "plain text",
            "$argon2i$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA",
        ] {
            assert_eq!(
                ExitPasscodeHash::parse(bad),
                Err(AdminExitError::NotArgon2id),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_sequence_then_the_right_passcode_exits() {
        let now = Instant::now();
        let mut gate = ExitGate::new(ExitKeys::default(), Some(test_hash("open sesame")));
        // Workers' keys pass, including q and Ctrl-C.
        for (code, modifiers) in [
            (KeyCode::Char('1'), KeyModifiers::NONE),
            (KeyCode::Char('q'), KeyModifiers::NONE),
            (KeyCode::Char('c'), KeyModifiers::CONTROL),
            (KeyCode::Enter, KeyModifiers::NONE),
        ] {
            assert_eq!(gate.key(&press(code, modifiers), now), GateOutcome::Pass);
        }
        assert_eq!(gate.screen(now), None);
        assert_eq!(
            gate.key(&press(KeyCode::Char('x'), CTRL_ALT), now),
            GateOutcome::Used
        );
        assert_eq!(gate.screen(now), Some(ExitScreen::Passcode { typed: 0 }));
        chars(&mut gate, "open sesamX", now);
        gate.key(&press(KeyCode::Backspace, KeyModifiers::NONE), now);
        chars(&mut gate, "e", now);
        assert_eq!(gate.screen(now), Some(ExitScreen::Passcode { typed: 11 }));
        assert!(!format!("{gate:?}").contains("open"));
        assert_eq!(
            gate.key(&press(KeyCode::Enter, KeyModifiers::NONE), now),
            GateOutcome::Exit
        );
    }

    #[test]
    fn a_wrong_passcode_makes_the_next_try_wait_longer() {
        let mut now = Instant::now();
        let mut gate = ExitGate::new(ExitKeys::default(), Some(test_hash("open sesame")));
        let sequence = press(KeyCode::Char('x'), CTRL_ALT);
        let enter = press(KeyCode::Enter, KeyModifiers::NONE);
        gate.key(&sequence, now);
        chars(&mut gate, "guess one", now);
        assert_eq!(gate.key(&enter, now), GateOutcome::Used);
        let Some(ExitScreen::Wrong { retry_at }) = gate.screen(now) else {
            panic!("{:?}", gate.screen(now));
        };
        assert_eq!(retry_at - now, FIRST_PAUSE);
        // Too soon: the sequence shows the wait again, not the prompt.
        now += Duration::from_secs(1);
        gate.key(&sequence, now);
        assert!(matches!(gate.screen(now), Some(ExitScreen::Wrong { .. })));
        now += FIRST_PAUSE;
        gate.key(&sequence, now);
        chars(&mut gate, "guess two", now);
        gate.key(&enter, now);
        let Some(ExitScreen::Wrong { retry_at }) = gate.screen(now) else {
            panic!("{:?}", gate.screen(now));
        };
        assert_eq!(retry_at - now, FIRST_PAUSE * 2);
        now += FIRST_PAUSE * 2;
        gate.key(&sequence, now);
        chars(&mut gate, "open sesame", now);
        assert_eq!(gate.key(&enter, now), GateOutcome::Exit);
    }

    #[test]
    fn escape_or_silence_closes_the_prompt_and_keys_pass_again() {
        let mut now = Instant::now();
        let mut gate = ExitGate::new(ExitKeys::default(), Some(test_hash("open sesame")));
        gate.key(&press(KeyCode::Char('x'), CTRL_ALT), now);
        chars(&mut gate, "open", now);
        gate.key(&press(KeyCode::Esc, KeyModifiers::NONE), now);
        assert_eq!(gate.screen(now), None);
        let digit = press(KeyCode::Char('4'), KeyModifiers::NONE);
        assert_eq!(gate.key(&digit, now), GateOutcome::Pass);
        gate.key(&press(KeyCode::Char('x'), CTRL_ALT), now);
        now += PROMPT_IDLE;
        assert_eq!(gate.screen(now), None);
        assert_eq!(gate.key(&digit, now), GateOutcome::Pass);
    }

    #[test]
    fn a_multi_key_sequence_must_be_pressed_in_time() {
        let mut now = Instant::now();
        let keys: ExitKeys = "f10 f10 f10".parse().unwrap();
        let mut gate = ExitGate::new(keys, None);
        let f10 = press(KeyCode::F(10), KeyModifiers::NONE);
        gate.key(&f10, now);
        gate.key(&f10, now);
        now += SEQUENCE_WINDOW + Duration::from_millis(1);
        gate.key(&f10, now);
        assert_eq!(gate.screen(now), None, "too slow: this F10 starts over");
        gate.key(&f10, now);
        gate.key(&f10, now);
        // No passcode configured: the screen says only a signal stops the kiosk.
        assert_eq!(gate.screen(now), Some(ExitScreen::NoPasscode));
        assert_eq!(
            gate.key(&press(KeyCode::Enter, KeyModifiers::NONE), now),
            GateOutcome::Pass
        );
        assert_eq!(gate.screen(now + MESSAGE_TIME), None);
    }
}
