//! Notices: what the kiosk tells a worker when things do not go to plan, with a stable code for programs and a plain-language message for people.

use std::fmt;

use pivtap_protocol::wire::{ErrorCode, SessionEndReason};
use serde::{Deserialize, Serialize};

use super::config::Flow;
use super::effect::SignOutReason;
use super::state::PinFormPurpose;
use pivtap_protocol::pin_policy::PinPolicyViolation;

/// A stable notice code, as `snake_case` text in JSON. Programs match on it; people read the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeCode {
    /// The card refused the PIN.
    WrongPin,
    /// Fewer than six digits were submitted.
    PinTooShort,
    /// An attempt came during the pause after a wrong PIN.
    WaitBeforeRetry,
    /// The badge's PIN is blocked.
    PinBlocked,
    /// PIN then tap: the badge was tapped before the PIN was typed.
    TypePinFirst,
    /// The badge left the reader before sign-in finished.
    CardRemoved,
    /// The badge could not be read.
    CardUnreadable,
    /// The card is not a sign-in badge.
    CardNotSupported,
    /// No card reader is connected.
    NoReader,
    /// Card readers are connected, but the reader filter leaves every one of them out.
    NoMatchingReader,
    /// The reader in use was unplugged.
    ReaderRemoved,
    /// The smart card service is not running.
    ReaderServiceDown,
    /// The sign-in server cannot be reached.
    ServerUnreachable,
    /// The sign-in server refused; [`Notice::server_code`] says why.
    ServerRefused,
    /// This device does not trust the sign-in server's TLS certificate.
    ServerUntrusted,
    /// Nothing happened for too long: a PIN was forgotten or work was abandoned.
    TimedOut,
    /// The worker cancelled the sign-in.
    Cancelled,
    /// A worker was signed out.
    SignedOut,
    /// The signed-in worker's PIN is changed.
    PinChanged,
    /// A new PIN breaks the PIN policy; the message names the rule.
    PinPolicy,
    /// The new PIN and its repetition differ.
    PinsDiffer,
    /// The card refused the PUK.
    WrongPuk,
    /// The PUK is blocked too.
    PukBlocked,
    /// Everything is typed: tap the badge.
    TapBadge,
    /// The badge tapped is not the signed-in worker's.
    OtherCard,
    /// The blocked PIN is replaced by a new one.
    CardUnblocked,
    /// PIN then tap: after a wrong PIN, another badge was tapped; the PIN typed was cleared
    /// without spending one of that badge's tries.
    PinForAnotherBadge,
}

impl NoticeCode {
    /// Every code, for documentation and tests.
    pub const ALL: [NoticeCode; 27] = [
        NoticeCode::WrongPin,
        NoticeCode::PinTooShort,
        NoticeCode::WaitBeforeRetry,
        NoticeCode::PinBlocked,
        NoticeCode::TypePinFirst,
        NoticeCode::CardRemoved,
        NoticeCode::CardUnreadable,
        NoticeCode::CardNotSupported,
        NoticeCode::NoReader,
        NoticeCode::NoMatchingReader,
        NoticeCode::ReaderRemoved,
        NoticeCode::ReaderServiceDown,
        NoticeCode::ServerUnreachable,
        NoticeCode::ServerRefused,
        NoticeCode::ServerUntrusted,
        NoticeCode::TimedOut,
        NoticeCode::Cancelled,
        NoticeCode::SignedOut,
        NoticeCode::PinChanged,
        NoticeCode::PinPolicy,
        NoticeCode::PinsDiffer,
        NoticeCode::WrongPuk,
        NoticeCode::PukBlocked,
        NoticeCode::TapBadge,
        NoticeCode::OtherCard,
        NoticeCode::CardUnblocked,
        NoticeCode::PinForAnotherBadge,
    ];

    /// The code as it appears in JSON (`wrong_pin`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            NoticeCode::WrongPin => "wrong_pin",
            NoticeCode::PinTooShort => "pin_too_short",
            NoticeCode::WaitBeforeRetry => "wait_before_retry",
            NoticeCode::PinBlocked => "pin_blocked",
            NoticeCode::TypePinFirst => "type_pin_first",
            NoticeCode::CardRemoved => "card_removed",
            NoticeCode::CardUnreadable => "card_unreadable",
            NoticeCode::CardNotSupported => "card_not_supported",
            NoticeCode::NoReader => "no_reader",
            NoticeCode::NoMatchingReader => "no_matching_reader",
            NoticeCode::ReaderRemoved => "reader_removed",
            NoticeCode::ReaderServiceDown => "reader_service_down",
            NoticeCode::ServerUnreachable => "server_unreachable",
            NoticeCode::ServerRefused => "server_refused",
            NoticeCode::ServerUntrusted => "server_untrusted",
            NoticeCode::TimedOut => "timed_out",
            NoticeCode::Cancelled => "cancelled",
            NoticeCode::SignedOut => "signed_out",
            NoticeCode::PinChanged => "pin_changed",
            NoticeCode::PinPolicy => "pin_policy",
            NoticeCode::PinsDiffer => "pins_differ",
            NoticeCode::WrongPuk => "wrong_puk",
            NoticeCode::PukBlocked => "puk_blocked",
            NoticeCode::TapBadge => "tap_badge",
            NoticeCode::OtherCard => "other_card",
            NoticeCode::CardUnblocked => "card_unblocked",
            NoticeCode::PinForAnotherBadge => "pin_for_another_badge",
        }
    }
}

impl fmt::Display for NoticeCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message for the worker: a stable code and plain words (no codes, no hex, no jargon).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notice {
    /// What happened, for programs.
    pub code: NoticeCode,
    /// With [`NoticeCode::ServerRefused`]: the server's code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_code: Option<ErrorCode>,
    /// What happened and what to do, for people.
    pub message: String,
}

impl Notice {
    fn new(code: NoticeCode, message: impl Into<String>) -> Self {
        Notice {
            code,
            server_code: None,
            message: message.into(),
        }
    }

    pub(super) fn wrong_pin(tries_left: Option<u8>) -> Self {
        Notice::new(
            NoticeCode::WrongPin,
            format!(
                "Wrong PIN. {} before the badge is blocked.",
                tries_left_text(tries_left)
            ),
        )
    }

    pub(super) fn pin_too_short() -> Self {
        Notice::new(NoticeCode::PinTooShort, "Your PIN has 6 to 8 digits.")
    }

    pub(super) fn wait_before_retry() -> Self {
        Notice::new(
            NoticeCode::WaitBeforeRetry,
            "Please wait a moment, then try again.",
        )
    }

    pub(super) fn pin_blocked(help_contact: &str) -> Self {
        Notice::new(
            NoticeCode::PinBlocked,
            format!(
                "This badge is blocked after too many wrong PINs. Ask {help_contact} to unblock it."
            ),
        )
    }

    pub(super) fn type_pin_first() -> Self {
        Notice::new(
            NoticeCode::TypePinFirst,
            "Type your PIN first, then tap your badge.",
        )
    }

    pub(super) fn card_removed() -> Self {
        Notice::new(
            NoticeCode::CardRemoved,
            "The badge was taken away before sign-in finished. Try again and keep it on the reader until your name appears.",
        )
    }

    pub(super) fn card_unreadable() -> Self {
        Notice::new(
            NoticeCode::CardUnreadable,
            "This badge could not be read. Hold it still on the reader and try again.",
        )
    }

    pub(super) fn card_not_supported() -> Self {
        Notice::new(
            NoticeCode::CardNotSupported,
            "This card is not a sign-in badge. Tap your work badge.",
        )
    }

    pub(super) fn no_reader() -> Self {
        Notice::new(
            NoticeCode::NoReader,
            "No card reader is connected. Plug in the card reader.",
        )
    }

    pub(super) fn no_matching_reader<'a>(
        seen: impl IntoIterator<Item = &'a String>,
        help_contact: &str,
    ) -> Self {
        let seen: Vec<&str> = seen.into_iter().map(String::as_str).collect();
        let (one, these) = if seen.len() == 1 {
            ("reader", "it is")
        } else {
            ("readers", "they are")
        };
        Notice::new(
            NoticeCode::NoMatchingReader,
            format!(
                "This kiosk is set up for another card reader: {these} not used ({one} seen: {}). Ask {help_contact}.",
                seen.join(", ")
            ),
        )
    }

    pub(super) fn reader_removed() -> Self {
        Notice::new(
            NoticeCode::ReaderRemoved,
            "The card reader was unplugged. Plug it in and try again.",
        )
    }

    pub(super) fn reader_service_down(help_contact: &str) -> Self {
        Notice::new(
            NoticeCode::ReaderServiceDown,
            format!(
                "The card reader service has stopped. It usually restarts by itself; if it does not, ask {help_contact}."
            ),
        )
    }

    pub(super) fn server_unreachable() -> Self {
        Notice::new(
            NoticeCode::ServerUnreachable,
            "Cannot reach the sign-in service. Check the network; sign-in works again as soon as it is back.",
        )
    }

    pub(super) fn server_untrusted(help_contact: &str) -> Self {
        Notice::new(
            NoticeCode::ServerUntrusted,
            format!(
                "This device does not trust the sign-in server, so it sends no badge to it. Ask {help_contact}."
            ),
        )
    }

    pub(super) fn server_refused(code: ErrorCode, help_contact: &str) -> Self {
        let message = match code {
            ErrorCode::CardLocked => format!("This badge is locked. Ask {help_contact}."),
            ErrorCode::CertificateExpired => {
                format!("This badge has expired. Ask {help_contact} for a new one.")
            }
            ErrorCode::CertificateRevoked => {
                format!("This badge is no longer valid. Ask {help_contact}.")
            }
            ErrorCode::CertificateUntrusted => {
                format!("This badge is not accepted here. Ask {help_contact}.")
            }
            ErrorCode::UserUnknown => {
                format!("This badge is not linked to a worker account. Ask {help_contact}.")
            }
            ErrorCode::UserLocked => format!("Your account is locked. Ask {help_contact}."),
            ErrorCode::RateLimited => {
                "Too many sign-in attempts. Wait a minute, then try again.".to_owned()
            }
            ErrorCode::DeviceUnknown | ErrorCode::DeviceProofInvalid => {
                format!("The sign-in server does not recognise this device. Ask {help_contact}.")
            }
            ErrorCode::DeviceDisabled => {
                format!("This device is switched off at the sign-in server. Ask {help_contact}.")
            }
            ErrorCode::Unavailable => {
                "The sign-in server is not ready. Sign-in works again as soon as it is.".to_owned()
            }
            _ => format!(
                "Sign-in did not work. Please try again; if it keeps failing, ask {help_contact}."
            ),
        };
        Notice {
            code: NoticeCode::ServerRefused,
            server_code: Some(code),
            message,
        }
    }

    pub(super) fn pin_entry_timed_out() -> Self {
        Notice::new(
            NoticeCode::TimedOut,
            "Sign-in stopped because no PIN was typed for a while. Tap your badge to try again.",
        )
    }

    pub(super) fn pin_forgotten() -> Self {
        Notice::new(
            NoticeCode::TimedOut,
            "Your PIN was cleared for your safety. Type it again, then tap your badge.",
        )
    }

    pub(super) fn work_timed_out() -> Self {
        Notice::new(
            NoticeCode::TimedOut,
            "Sign-in took too long. Please tap your badge again.",
        )
    }

    pub(super) fn pin_for_another_badge(holder: Option<&str>) -> Self {
        let whose =
            holder.map_or_else(|| "another worker's".to_owned(), |name| format!("{name}'s"));
        Notice::new(
            NoticeCode::PinForAnotherBadge,
            format!(
                "This is {whose} badge. The PIN typed for another badge was cleared: type your PIN, then tap."
            ),
        )
    }

    pub(super) fn cancelled() -> Self {
        Notice::new(NoticeCode::Cancelled, "Sign-in cancelled.")
    }

    pub(super) fn signed_out(name: &str, reason: SignOutReason) -> Self {
        let message = match reason {
            SignOutReason::CardRemoved => format!("{name} is signed out: the badge was removed."),
            SignOutReason::ReaderLost => {
                format!("{name} is signed out: the card reader was disconnected.")
            }
            SignOutReason::Idle => format!("{name} was signed out after a while without activity."),
            SignOutReason::Explicit => format!("{name} is signed out."),
            SignOutReason::Switched => {
                format!("{name} was signed out because another worker signed in.")
            }
            SignOutReason::Expired => {
                format!("{name}'s session has ended. Tap your badge to sign in again.")
            }
            SignOutReason::Shutdown => format!("{name} is signed out: the kiosk is stopping."),
            SignOutReason::Renewed => format!("{name} signed in again."),
            SignOutReason::EndedAtServer => return Notice::ended_at_server(name, None),
        };
        Notice::new(NoticeCode::SignedOut, message)
    }

    /// The server ended `name`'s session, for `reason` when it said.
    pub(super) fn ended_at_server(name: &str, reason: Option<SessionEndReason>) -> Self {
        let message = match reason {
            Some(SessionEndReason::Admin) => {
                format!("An administrator ended your session: {name} is signed out.")
            }
            Some(SessionEndReason::CardLocked) => {
                format!("This badge was locked: {name} is signed out.")
            }
            Some(SessionEndReason::CardRevoked) => {
                format!("This badge was revoked: {name} is signed out.")
            }
            Some(SessionEndReason::UserLocked) => {
                format!("{name}'s account was locked: {name} is signed out.")
            }
            Some(SessionEndReason::UserDeleted) => {
                format!("{name}'s account was removed: {name} is signed out.")
            }
            Some(SessionEndReason::MaxAge) => {
                format!("{name}'s session reached its time limit. Tap your badge to sign in again.")
            }
            Some(SessionEndReason::RefreshReused) => format!(
                "{name}'s session was ended for safety (its sign-in was used twice). Tap your badge to sign in again."
            ),
            Some(SessionEndReason::SignedOut) => {
                format!("{name} was signed out at the sign-in server.")
            }
            None => format!("The sign-in server ended {name}'s session."),
        };
        Notice::new(NoticeCode::SignedOut, message)
    }

    // --- PIN change and unblock ---

    pub(super) fn puk_too_short() -> Self {
        Notice::new(NoticeCode::PinTooShort, "The PUK has 6 to 8 digits.")
    }

    pub(super) fn pin_policy(violation: PinPolicyViolation) -> Self {
        Notice::new(
            NoticeCode::PinPolicy,
            format!("This PIN cannot be used: {violation}. Choose another one."),
        )
    }

    pub(super) fn pins_differ() -> Self {
        Notice::new(
            NoticeCode::PinsDiffer,
            "The two new PINs are not the same. Type the new PIN again.",
        )
    }

    pub(super) fn wrong_current_pin(tries_left: Option<u8>) -> Self {
        Notice::new(
            NoticeCode::WrongPin,
            format!(
                "Wrong current PIN. {} before the badge is blocked. Type your current PIN again.",
                tries_left_text(tries_left)
            ),
        )
    }

    pub(super) fn wrong_puk(tries_left: Option<u8>) -> Self {
        Notice::new(
            NoticeCode::WrongPuk,
            format!(
                "Wrong PUK. {} before the PUK is blocked too.",
                tries_left_text(tries_left)
            ),
        )
    }

    pub(super) fn puk_blocked(help_contact: &str) -> Self {
        Notice::new(
            NoticeCode::PukBlocked,
            format!(
                "The PUK is blocked too, so this badge cannot be unblocked here. Ask {help_contact} to reset it or for a new badge."
            ),
        )
    }

    pub(super) fn pin_blocked_while_changing(help_contact: &str) -> Self {
        Notice::new(
            NoticeCode::PinBlocked,
            format!(
                "The PIN was not changed: the badge is now blocked after too many wrong PINs. Unblock it with your PUK or ask {help_contact}."
            ),
        )
    }

    pub(super) fn tap_badge(purpose: PinFormPurpose) -> Self {
        Notice::new(
            NoticeCode::TapBadge,
            match purpose {
                PinFormPurpose::ChangePin => {
                    "Tap your badge and keep it on the reader to change the PIN."
                }
                PinFormPurpose::Unblock => {
                    "Tap your badge and keep it on the reader to unblock it."
                }
            },
        )
    }

    pub(super) fn badge_left(purpose: PinFormPurpose) -> Self {
        Notice::new(
            NoticeCode::CardRemoved,
            match purpose {
                PinFormPurpose::ChangePin => {
                    "The badge left the reader before the PIN was changed. Tap it again and keep it there."
                }
                PinFormPurpose::Unblock => {
                    "The badge left the reader before it was unblocked. Tap it again and keep it there."
                }
            },
        )
    }

    pub(super) fn other_card() -> Self {
        Notice::new(
            NoticeCode::OtherCard,
            "This is not the signed-in worker's badge. Tap your own badge.",
        )
    }

    pub(super) fn pin_changed() -> Self {
        Notice::new(
            NoticeCode::PinChanged,
            "Your PIN is changed. Use the new PIN from now on.",
        )
    }

    pub(super) fn card_unblocked_enter_pin() -> Self {
        Notice::new(
            NoticeCode::CardUnblocked,
            "Your badge is unblocked. Enter your new PIN.",
        )
    }

    pub(super) fn card_unblocked(flow: Flow) -> Self {
        Notice::new(
            NoticeCode::CardUnblocked,
            match flow {
                Flow::TapThenPin => "Your badge is unblocked. Tap it and enter your new PIN.",
                Flow::PinThenTap => {
                    "Your badge is unblocked. Type your new PIN, then tap your badge."
                }
            },
        )
    }

    pub(super) fn pin_work_failed(purpose: PinFormPurpose) -> Self {
        Notice::new(
            NoticeCode::CardUnreadable,
            match purpose {
                PinFormPurpose::ChangePin => {
                    "The PIN was not changed: the badge did not answer properly. Try again."
                }
                PinFormPurpose::Unblock => {
                    "The badge was not unblocked: it did not answer properly. Try again."
                }
            },
        )
    }

    pub(super) fn pin_work_timed_out(purpose: PinFormPurpose) -> Self {
        Notice::new(
            NoticeCode::TimedOut,
            match purpose {
                PinFormPurpose::ChangePin => {
                    "The PIN change stopped: the badge took too long to answer. Try again."
                }
                PinFormPurpose::Unblock => {
                    "The unblock stopped: the badge took too long to answer. Try again."
                }
            },
        )
    }

    pub(super) fn form_timed_out(purpose: PinFormPurpose) -> Self {
        Notice::new(
            NoticeCode::TimedOut,
            match purpose {
                PinFormPurpose::ChangePin => {
                    "The PIN change stopped because nothing happened for a while. Your PIN is unchanged."
                }
                PinFormPurpose::Unblock => {
                    "The unblock stopped because nothing happened for a while. The badge is still blocked."
                }
            },
        )
    }

    pub(super) fn form_cancelled(purpose: PinFormPurpose) -> Self {
        Notice::new(
            NoticeCode::Cancelled,
            match purpose {
                PinFormPurpose::ChangePin => "PIN change cancelled. Your PIN is unchanged.",
                PinFormPurpose::Unblock => "Unblock cancelled. The badge is still blocked.",
            },
        )
    }
}

/// "2 tries left", or, for a badge that does not say (a plain `6300`), that
/// the count is unknown.
fn tries_left_text(tries_left: Option<u8>) -> String {
    match tries_left {
        Some(1) => "1 try left".to_owned(),
        Some(n) => format!("{n} tries left"),
        None => "The badge does not say how many tries are left".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_read_the_same_in_json_and_as_str() {
        for code in NoticeCode::ALL {
            assert_eq!(
                serde_json::to_string(&code).unwrap(),
                format!("\"{}\"", code.as_str())
            );
        }
    }

    #[test]
    fn a_refusal_carries_the_server_code_and_plain_words() {
        let notice = Notice::server_refused(ErrorCode::CardLocked, "the site office");
        assert_eq!(notice.server_code, Some(ErrorCode::CardLocked));
        assert_eq!(notice.message, "This badge is locked. Ask the site office.");
        for code in ErrorCode::ALL {
            let message = Notice::server_refused(code, "the site office").message;
            assert!(!message.contains(code.as_str()), "{message}");
            assert!(!message.contains('_'), "{message}");
        }
    }

    #[test]
    fn wrong_pin_counts_tries_in_words() {
        assert_eq!(
            Notice::wrong_pin(Some(1)).message,
            "Wrong PIN. 1 try left before the badge is blocked."
        );
        assert_eq!(
            Notice::wrong_pin(Some(2)).message,
            "Wrong PIN. 2 tries left before the badge is blocked."
        );
        assert_eq!(
            Notice::wrong_pin(None).message,
            "Wrong PIN. The badge does not say how many tries are left before the badge is blocked."
        );
        assert_eq!(
            Notice::wrong_puk(None).message,
            "Wrong PUK. The badge does not say how many tries are left before the PUK is blocked too."
        );
    }
}
