//! Headless mode: session events as JSON lines on standard output, and PINs (or `sign-out`, `change-pin`, `unblock`, `cancel`, `quit`) as lines on standard input.
//!
//! Output lines: `{"event":"card_present","reader":...}`,
//! `{"event":"pin_required","tries_left":2}`, `{"event":"signed_in","user":{...},"expires_at":...,"token":...}`,
//! `{"event":"signed_out","user_id":...,"reason":"card_removed"}`,
//! `{"event":"error","code":...,"message":...}`.
//!
//! Changing the PIN (`change-pin` while signed in) and unblocking it with the PUK (`unblock`
//! on the blocked screen) ask for each value with a prompt event, answered by a line of
//! digits: `current_pin_required` / `puk_required` (with `tries_left` after a wrong one),
//! `new_pin_required` (`"repeat": false`, then `true`), `tap_required` when the badge must be
//! tapped; they end with `pin_changed` / `card_unblocked`, or
//! `{"event":"pin_change_failed","reason":...,"message":...}` /
//! `{"event":"unblock_failed",...}` (reasons `policy`, `mismatch`, `wrong_pin`, `pin_blocked`,
//! `wrong_puk`, `puk_blocked`, `card_removed`, `other_card`, `card_error`, `timed_out`,
//! `cancelled`). `cancel` abandons either. No event ever carries a PIN or PUK.

use std::io::{BufRead, Write};
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;
use zeroize::Zeroizing;

use crate::core::{Kiosk, SessionEvent};
use crate::runtime::{Face, Input};

/// Writes one JSON line per session event.
pub struct HeadlessFace<W: Write + Send> {
    out: W,
}

impl<W: Write + Send> HeadlessFace<W> {
    /// A face writing to `out` (standard output in `--headless`).
    pub fn new(out: W) -> Self {
        HeadlessFace { out }
    }
}

/// The JSON line for an event that happened `at`: the event itself with `"at"` (RFC 3339),
/// plus the token on `signed_in`.
#[must_use]
pub fn event_line(event: &SessionEvent, token: Option<&str>, at: time::OffsetDateTime) -> String {
    let mut value = event.to_json_at(at);
    if let (SessionEvent::SignedIn { .. }, Some(token), Some(object)) =
        (event, token, value.as_object_mut())
    {
        object.insert(
            "token".to_owned(),
            serde_json::Value::String(token.to_owned()),
        );
    }
    value.to_string()
}

impl<W: Write + Send> Face for HeadlessFace<W> {
    fn refresh(&mut self, _kiosk: &Kiosk, _server_reachable: bool, _now: Instant) {}

    fn session_event(&mut self, event: &SessionEvent, token: Option<&str>) {
        // A closed standard output is not the kiosk's problem: keep running.
        let line = event_line(event, token, time::OffsetDateTime::now_utc());
        let _ = writeln!(self.out, "{line}");
        let _ = self.out.flush();
    }
}

/// What one input line means.
#[must_use]
pub fn parse_line(line: &str) -> Option<Input> {
    let line = line.trim();
    match line {
        "" => None,
        "sign-out" | "signout" => Some(Input::SignOut),
        "change-pin" => Some(Input::ChangePin),
        "unblock" | "unblock-pin" => Some(Input::Unblock),
        "cancel" => Some(Input::Key(crate::core::KeyInput::Escape)),
        "quit" | "exit" => Some(Input::Quit),
        digits if digits.bytes().all(|b| b.is_ascii_digit()) => {
            Some(Input::Pin(Zeroizing::new(digits.to_owned())))
        }
        _ => None,
    }
}

/// Reads standard input on a thread of its own and forwards what each line means.
/// At the end of input the kiosk keeps running (stop it with a signal or `quit`).
pub fn read_stdin(inputs: UnboundedSender<Input>) {
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line.map(Zeroizing::new) else {
                break;
            };
            let Some(input) = parse_line(&line) else {
                if !line.trim().is_empty() {
                    eprintln!(
                        "headless: ignored input line (expected digits, `sign-out`, `change-pin`, `unblock`, `cancel` or `quit`)"
                    );
                }
                continue;
            };
            if inputs.send(input).is_err() {
                break;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use pivtap_protocol::wire::UserInfo;

    #[test]
    fn signed_in_lines_carry_the_token() {
        let event = SessionEvent::SignedIn {
            user: UserInfo {
                id: "alice".to_owned(),
                display_name: "Alice".to_owned(),
                mail: None,
            },
            expires_at: time::OffsetDateTime::UNIX_EPOCH,
        };
        let at = time::OffsetDateTime::UNIX_EPOCH;
        let line: serde_json::Value =
            serde_json::from_str(&event_line(&event, Some("t0k"), at)).unwrap();
        assert_eq!(line["event"], "signed_in");
        assert_eq!(line["at"], "1970-01-01T00:00:00Z");
        assert_eq!(line["token"], "t0k");
        assert_eq!(line["user"]["id"], "alice");
        let pin = SessionEvent::PinRequired {
            tries_left: Some(2),
        };
        let line: serde_json::Value =
            serde_json::from_str(&event_line(&pin, Some("ignored"), at)).unwrap();
        assert_eq!(
            line,
            serde_json::json!({"event": "pin_required", "tries_left": 2, "at": "1970-01-01T00:00:00Z"})
        );
    }

    #[test]
    fn input_lines() {
        assert!(
            matches!(parse_line("123456\n"), Some(Input::Pin(pin)) if pin.as_str() == "123456")
        );
        assert!(matches!(parse_line("sign-out"), Some(Input::SignOut)));
        assert!(matches!(parse_line("quit"), Some(Input::Quit)));
        assert!(matches!(parse_line("change-pin"), Some(Input::ChangePin)));
        assert!(matches!(parse_line("unblock\n"), Some(Input::Unblock)));
        assert!(matches!(
            parse_line("cancel"),
            Some(Input::Key(crate::core::KeyInput::Escape))
        ));
        assert!(parse_line("hello").is_none());
        assert!(parse_line("  ").is_none());
    }
}
