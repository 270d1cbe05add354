//! The terminal face: draws the core's state with [`crate::tui::render`] and turns key presses into runtime inputs.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use crate::admin_exit::{ExitGate, GateOutcome};
use crate::core::{Kiosk, SessionEvent};
use crate::runtime::{Face, Input};
use crate::tui::{Branding, UiKey, View, key_input, render};

/// How the terminal face can be left.
#[derive(Debug)]
pub enum QuitKeys {
    /// The demo: `q`, `Q` or Ctrl-C quit at once.
    Demo,
    /// The production kiosk: only the administrator's exit (key sequence, then passcode);
    /// `q`, `Q` and Ctrl-C do nothing.
    Administrator(ExitGate),
}

/// The demo's help lines, made afresh for each frame (they say which badge is on the reader).
pub type DemoHelp = Box<dyn Fn() -> Vec<String> + Send>;

/// Draws the kiosk in the terminal (alternate screen, raw mode); restores the terminal on drop.
pub struct TerminalFace {
    terminal: ratatui::DefaultTerminal,
    branding: Branding,
    device: String,
    demo_help: Option<DemoHelp>,
    /// The administrator's exit (none in the demo), shared with the key thread.
    gate: Option<Arc<Mutex<ExitGate>>>,
}

impl TerminalFace {
    /// Takes over the terminal.
    pub fn new(
        branding: Branding,
        device: String,
        demo_help: Option<DemoHelp>,
        quit: QuitKeys,
    ) -> Self {
        let gate = match quit {
            QuitKeys::Demo => None,
            QuitKeys::Administrator(gate) => Some(Arc::new(Mutex::new(gate))),
        };
        TerminalFace {
            terminal: ratatui::init(),
            branding,
            device,
            demo_help,
            gate,
        }
    }

    /// Reads keys on a thread of its own and forwards them as inputs; in the production kiosk
    /// every key goes through the administrator's exit first.
    pub fn read_keys(&self, inputs: UnboundedSender<Input>) {
        let gate = self.gate.clone();
        std::thread::spawn(move || {
            while let Ok(event) = crossterm::event::read() {
                let crossterm::event::Event::Key(key) = event else {
                    continue;
                };
                if let Some(gate) = &gate {
                    let outcome = lock(gate).key(&key, Instant::now());
                    let input = match outcome {
                        GateOutcome::Pass => None,
                        GateOutcome::Used => Some(Input::Redraw),
                        GateOutcome::Exit => Some(Input::Quit),
                    };
                    if let Some(input) = input {
                        let quit = matches!(input, Input::Quit);
                        if inputs.send(input).is_err() || quit {
                            break;
                        }
                        continue;
                    }
                }
                let input = match key_input(&key) {
                    Some(UiKey::Core(key)) => Input::Key(key),
                    Some(UiKey::SignOut) => Input::SignOut,
                    Some(UiKey::ChangePin) => Input::ChangePin,
                    Some(UiKey::Unblock) => Input::Unblock,
                    // Workers cannot quit the production kiosk.
                    Some(UiKey::Quit) if gate.is_some() => continue,
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
        let demo_help = self.demo_help.as_ref().map(|help| help());
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
            demo_help: demo_help.as_deref(),
            exit: self.gate.as_ref().and_then(|gate| lock(gate).screen(now)),
            waiting_worker: kiosk
                .switching_from()
                .map(|session| session.user.display_name.as_str()),
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

/// The gate, even if the key thread panicked while holding it.
fn lock(gate: &Mutex<ExitGate>) -> std::sync::MutexGuard<'_, ExitGate> {
    gate.lock().unwrap_or_else(PoisonError::into_inner)
}
