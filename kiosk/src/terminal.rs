//! The terminal face: draws the core's state with [`crate::tui::render`] and turns key presses into runtime inputs.

use std::collections::BTreeSet;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use crate::core::{Kiosk, SessionEvent};
use crate::runtime::{Face, Input};
use crate::tui::{Branding, UiKey, View, key_input, render};

/// Draws the kiosk in the terminal (alternate screen, raw mode); restores the terminal on drop.
pub struct TerminalFace {
    terminal: ratatui::DefaultTerminal,
    branding: Branding,
    device: String,
    demo_help: Option<Vec<String>>,
}

impl TerminalFace {
    /// Takes over the terminal.
    pub fn new(branding: Branding, device: String, demo_help: Option<Vec<String>>) -> Self {
        TerminalFace {
            terminal: ratatui::init(),
            branding,
            device,
            demo_help,
        }
    }

    /// Reads keys on a thread of its own and forwards them as inputs.
    pub fn read_keys(inputs: UnboundedSender<Input>) {
        std::thread::spawn(move || {
            while let Ok(event) = crossterm::event::read() {
                let crossterm::event::Event::Key(key) = event else {
                    continue;
                };
                let input = match key_input(&key) {
                    Some(UiKey::Core(key)) => Input::Key(key),
                    Some(UiKey::SignOut) => Input::SignOut,
                    Some(UiKey::ChangePin) => Input::ChangePin,
                    Some(UiKey::Unblock) => Input::Unblock,
                    Some(UiKey::Quit) => Input::Quit,
                    Some(UiKey::Function(number)) => Input::Function(number),
                    None => continue,
                };
                let quit = matches!(input, Input::Quit);
                if inputs.send(input).is_err() || quit {
                    break;
                }
            }
        });
    }
}

impl Face for TerminalFace {
    fn refresh(&mut self, kiosk: &Kiosk, _server_reachable: bool, now: Instant) {
        let readers: &BTreeSet<String> = kiosk.readers();
        let view = View {
            state: kiosk.state(),
            flow: kiosk.config().flow,
            readers,
            server: kiosk.server_status(),
            server_last_seen: kiosk.server_last_seen(),
            branding: &self.branding,
            device: &self.device,
            now,
            clock: time::OffsetDateTime::now_local()
                .unwrap_or_else(|_| time::OffsetDateTime::now_utc()),
            demo_help: self.demo_help.as_deref(),
        };
        let _ = self.terminal.draw(|frame| render(frame, &view));
    }

    fn session_event(&mut self, event: &SessionEvent, _token: Option<&str>) {
        tracing::info!(target: "pivtap::kiosk", ?event, "session event");
    }
}

impl Drop for TerminalFace {
    fn drop(&mut self) {
        ratatui::restore();
    }
}
