//! What the kiosk core can be configured to do: the sign-in flow, the session policy, and how long it waits for people.

use std::time::Duration;

use pivtap_protocol::pin_policy::PinPolicy;
use serde::{Deserialize, Serialize};

/// The order in which a worker presents the badge and the PIN (DESIGN.md, "One tap, end to end").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Flow {
    /// The badge rests on a desk reader; the kiosk reads it, greets the worker, then asks for the PIN.
    #[default]
    TapThenPin,
    /// The worker types the PIN first (held, zeroized, in memory), then taps: one short burst on the
    /// card, so a badge held briefly to an NFC reader works.
    PinThenTap,
}

/// When a signed-in session ends, besides an explicit sign-out and the token's expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionPolicy {
    /// End the session when the badge leaves the reader. While it stays, the session stays:
    /// the idle time-out does not run.
    pub sign_out_on_removal: bool,
    /// End the session after this long without key input or a tap; `None` never does.
    pub idle_timeout: Option<Duration>,
    /// A tap by another badge while someone is signed in starts the new worker's sign-in; the
    /// old worker is signed out once the new PIN is accepted. When off, such taps are ignored.
    pub fast_user_switch: bool,
    /// Warn this long before the idle sign-out and before the session's end
    /// ([`SessionEvent::SessionEnding`](super::SessionEvent::SessionEnding)); zero never warns.
    pub warning_lead: Duration,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        SessionPolicy {
            sign_out_on_removal: true,
            idle_timeout: Some(Duration::from_secs(15 * 60)),
            fast_user_switch: true,
            warning_lead: Duration::from_secs(30),
        }
    }
}

/// The pause imposed after consecutive wrong PINs: `first`, doubling with each one in a row, never
/// more than `longest`. A successful sign-in resets the count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WrongPinDelay {
    /// The pause after the first wrong PIN.
    pub first: Duration,
    /// The longest pause.
    pub longest: Duration,
}

impl WrongPinDelay {
    /// The pause after `wrong_pins_in_a_row` consecutive wrong PINs (none after zero).
    #[must_use]
    pub fn after(&self, wrong_pins_in_a_row: u32) -> Duration {
        let Some(doublings) = wrong_pins_in_a_row.checked_sub(1) else {
            return Duration::ZERO;
        };
        let factor = 1u32.checked_shl(doublings).unwrap_or(u32::MAX);
        self.first.saturating_mul(factor).min(self.longest)
    }
}

impl Default for WrongPinDelay {
    fn default() -> Self {
        WrongPinDelay {
            first: Duration::from_secs(1),
            longest: Duration::from_secs(30),
        }
    }
}

/// Everything the core needs to know about its deployment. [`Default`] gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoreConfig {
    /// Badge first or PIN first. Default: tap then PIN.
    pub flow: Flow,
    /// When sessions end. Default: on removal, after 15 minutes idle, fast user switch on.
    pub session: SessionPolicy,
    /// The growing pause after wrong PINs. Default: 1 s, doubling, at most 30 s.
    pub wrong_pin_delay: WrongPinDelay,
    /// Tap then PIN: give up on a PIN entry after this long without a key (the typed digits are
    /// cleared). Default: 60 s.
    pub pin_entry_timeout: Duration,
    /// PIN then tap: forget a typed PIN after this long without a key or a tap. Default: 30 s.
    pub pin_hold_timeout: Duration,
    /// Give up on card or server work that has not answered after this long. Default: 30 s.
    pub work_timeout: Duration,
    /// How long a passing message (an error, "signed out") stays on screen. Default: 6 s.
    pub message_duration: Duration,
    /// Whom workers should ask for help, as it reads in a sentence ("Ask {help_contact} to unblock it").
    /// Default: "your IT service desk".
    pub help_contact: String,
    /// The rules new PINs must follow (PIN change, unblock). The runtime replaces the default
    /// with the server's policy ([`Event::PinPolicyKnown`](super::Event::PinPolicyKnown)).
    pub pin_policy: PinPolicy,
}

impl Default for CoreConfig {
    fn default() -> Self {
        CoreConfig {
            flow: Flow::default(),
            session: SessionPolicy::default(),
            wrong_pin_delay: WrongPinDelay::default(),
            pin_entry_timeout: Duration::from_secs(60),
            pin_hold_timeout: Duration::from_secs(30),
            work_timeout: Duration::from_secs(30),
            message_duration: Duration::from_secs(6),
            help_contact: "your IT service desk".to_owned(),
            pin_policy: PinPolicy::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_pin_delay_doubles_up_to_the_longest() {
        let delay = WrongPinDelay::default();
        let seconds: Vec<u64> = (0..8).map(|n| delay.after(n).as_secs()).collect();
        assert_eq!(seconds, [0, 1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(delay.after(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn flow_names_match_the_configuration_file() {
        assert_eq!(
            serde_json::to_string(&Flow::PinThenTap).unwrap(),
            "\"pin_then_tap\""
        );
        assert_eq!(
            serde_json::from_str::<Flow>("\"tap_then_pin\"").unwrap(),
            Flow::TapThenPin
        );
    }
}
