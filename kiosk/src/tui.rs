//! The kiosk's terminal face: draws the core's [`State`] as a large, calm screen and turns key presses into inputs.
//!
//! The screen has the organisation's name at the top in its colours, one centred message in a
//! frame, and a status line at the bottom (reader, server, device, clock); the demo adds a panel
//! with its function keys. [`render`] is a pure function of a [`View`] and [`key_input`] of a key
//! event: the runtime owns the terminal, the event loop and the core. PINs show as `●` only
//! (the state holds the number of digits, never the digits), and every notice in plain words.

use std::collections::BTreeSet;
use std::time::Instant;

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, BorderType, Padding, Paragraph, Wrap};
use time::OffsetDateTime;

use crate::admin_exit::ExitScreen;
use crate::core::{
    CardSummary, Flow, KeyInput, Notice, NoticeCode, PIN_MIN_DIGITS, PinForm, PinFormPurpose,
    PinFormStep, PinPrompt, ServerStatus, Session, SignOutReason, State, Step,
};

/// How the screen looks for the organisation running the kiosk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branding {
    /// The organisation's name, shown at the top.
    pub organisation: String,
    /// The main colour: the title bar's background and the message frame.
    pub primary: Color,
    /// The second colour: the name on the title bar and the big message.
    pub accent: Color,
}

/// Everything one frame shows: the core's state and what the runtime knows around it.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// The core's state ([`Kiosk::state`](crate::core::Kiosk::state)).
    pub state: &'a State,
    /// The configured flow: with PIN then tap, waiting reads "Type your PIN, then tap your badge".
    pub flow: Flow,
    /// The connected readers ([`Kiosk::readers`](crate::core::Kiosk::readers)).
    pub readers: &'a BTreeSet<String>,
    /// What the sign-in server did last time ([`Kiosk::server_status`](crate::core::Kiosk::server_status)).
    pub server: ServerStatus,
    /// When it last answered, on the monotonic clock ([`Kiosk::server_last_seen`](crate::core::Kiosk::server_last_seen)).
    pub server_last_seen: Option<Instant>,
    /// The organisation's name and colours.
    pub branding: &'a Branding,
    /// This device's id, as the server knows it.
    pub device: &'a str,
    /// Now on the monotonic clock, for countdowns.
    pub now: Instant,
    /// Now on the wall clock, in the offset to show times in.
    pub clock: OffsetDateTime,
    /// The demo's help lines (function keys, demo PINs), shown in a panel of their own.
    pub demo_help: Option<&'a [String]>,
    /// The administrator's exit, when its key sequence was pressed: shown instead of the
    /// kiosk's message.
    pub exit: Option<ExitScreen>,
    /// Fast user switch: who stays signed in until the new worker's PIN is accepted
    /// ([`Kiosk::switching_from`](crate::core::Kiosk::switching_from)).
    pub waiting_worker: Option<&'a str>,
}

/// What a key press means to the kiosk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UiKey {
    /// A key for the core: a digit, Backspace, Enter or Escape.
    Core(KeyInput),
    /// `s` or `S`: sign the current worker out.
    SignOut,
    /// `c` or `C`: the signed-in worker changes their PIN.
    ChangePin,
    /// `u` or `U`: on the blocked screen, unblock the PIN with the PUK.
    Unblock,
    /// `q`, `Q` or Ctrl-C: leave the demo (the production kiosk ignores them: see
    /// [`crate::admin_exit`]).
    Quit,
    /// F1 to F12, for the runtime (the demo maps them to taps and removals).
    Function(u8),
}

/// The style of the wait countdown after a wrong PIN.
const CAUTION: Style = Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD);
/// The style of the last PIN try and of problems in the status line.
const WARNING: Style = Style::new()
    .fg(Color::LightRed)
    .add_modifier(Modifier::BOLD);
/// The style of hints about keys.
const HINT: Style = Style::new().add_modifier(Modifier::DIM);
/// The style of the masked PIN.
const PIN_DOTS: Style = Style::new().add_modifier(Modifier::BOLD);
/// Below this many rows the title bar takes one row instead of three.
const ROWS_FOR_TALL_TITLE: u16 = 16;
/// From this many columns the demo panel sits beside the message, below it otherwise.
const COLUMNS_FOR_SIDE_PANEL: u16 = 64;
/// The message frame is at least this wide, when the screen allows.
const MESSAGE_MIN_WIDTH: u16 = 44;
/// The message frame is at most this wide; longer lines wrap.
const MESSAGE_MAX_WIDTH: u16 = 66;
/// The frame's borders and padding, left and right together.
const MESSAGE_FRAME_WIDTH: u16 = 6;
/// Names are cut to this many characters, so a greeting stays short.
const NAME_MAX_CHARS: usize = 40;

/// Draws the whole screen for `view`.
pub fn render(frame: &mut Frame, view: &View) {
    let area = frame.area();
    let title_rows = if area.height < ROWS_FOR_TALL_TITLE {
        1
    } else {
        3
    };
    let (connections, device_and_clock) = status_lines(view);
    let status_fits_one_row =
        connections.width() + device_and_clock.width() <= usize::from(area.width);
    let [title, middle, status] = Layout::vertical([
        Constraint::Length(title_rows),
        Constraint::Fill(1),
        Constraint::Length(if status_fits_one_row { 1 } else { 2 }),
    ])
    .areas(area);
    render_title(frame, title, view.branding);
    let message = match view.demo_help.filter(|help| !help.is_empty()) {
        Some(help) => render_demo_panel(frame, middle, help),
        None => middle,
    };
    let lines = match view.exit {
        Some(exit) => exit_lines(exit, view),
        None => {
            let mut lines = message_lines(view);
            if let Some(name) = view.waiting_worker {
                lines.push(Line::default());
                lines.push(Line::styled(
                    format!(
                        "{} stays signed in until your PIN is accepted",
                        short_name(name)
                    ),
                    HINT,
                ));
            }
            lines
        }
    };
    render_message(frame, message, lines, view.branding);
    render_status(frame, status, connections, device_and_clock);
}

/// Maps a key press to what it means; releases, repeats and every other key give `None`.
#[must_use]
pub fn key_input(event: &KeyEvent) -> Option<UiKey> {
    if event.kind != KeyEventKind::Press {
        return None;
    }
    let control = event.modifiers.contains(KeyModifiers::CONTROL);
    let modified = event
        .modifiers
        .intersects(KeyModifiers::CONTROL | KeyModifiers::ALT | KeyModifiers::SUPER);
    match event.code {
        KeyCode::Char('c' | 'C') if control => Some(UiKey::Quit),
        _ if modified => None,
        KeyCode::Char(digit @ '0'..='9') => digit
            .to_digit(10)
            .and_then(|value| u8::try_from(value).ok())
            .map(|value| UiKey::Core(KeyInput::Digit(value))),
        KeyCode::Char('s' | 'S') => Some(UiKey::SignOut),
        KeyCode::Char('c' | 'C') => Some(UiKey::ChangePin),
        KeyCode::Char('u' | 'U') => Some(UiKey::Unblock),
        KeyCode::Char('q' | 'Q') => Some(UiKey::Quit),
        KeyCode::Backspace => Some(UiKey::Core(KeyInput::Backspace)),
        KeyCode::Enter => Some(UiKey::Core(KeyInput::Enter)),
        KeyCode::Esc => Some(UiKey::Core(KeyInput::Escape)),
        KeyCode::F(number @ 1..=12) => Some(UiKey::Function(number)),
        // Any other key still counts: "press any key", and activity against the idle sign-out.
        KeyCode::Char(_)
        | KeyCode::Tab
        | KeyCode::BackTab
        | KeyCode::Delete
        | KeyCode::Insert
        | KeyCode::Home
        | KeyCode::End
        | KeyCode::PageUp
        | KeyCode::PageDown
        | KeyCode::Up
        | KeyCode::Down
        | KeyCode::Left
        | KeyCode::Right => Some(UiKey::Core(KeyInput::Other)),
        _ => None,
    }
}

fn render_title(frame: &mut Frame, area: Rect, branding: &Branding) {
    let bar = Style::new().bg(branding.primary).fg(branding.accent);
    frame.render_widget(Block::new().style(bar), area);
    let name = Paragraph::new(branding.organisation.as_str())
        .style(bar.add_modifier(Modifier::BOLD))
        .alignment(Alignment::Center);
    frame.render_widget(name, area.centered_vertically(Constraint::Length(1)));
}

/// Draws the demo's help beside the message (wide screens) or below it (narrow ones, when there
/// is room) and returns the area left for the message.
fn render_demo_panel(frame: &mut Frame, area: Rect, help: &[String]) -> Rect {
    let panel = Block::bordered()
        .title(" Demo ")
        .border_type(BorderType::Rounded)
        .border_style(HINT);
    let lines: Vec<Line> = help.iter().map(|line| Line::from(line.as_str())).collect();
    let longest = lines.iter().map(Line::width).max().unwrap_or(0);
    let (message, help_area) = if area.width >= COLUMNS_FOR_SIDE_PANEL {
        let width = to_u16(longest).saturating_add(4).min(area.width / 3);
        let [message, help_column] =
            Layout::horizontal([Constraint::Fill(1), Constraint::Length(width)]).areas(area);
        let text_width = usize::from(width.saturating_sub(4));
        let rows = lines
            .iter()
            .map(|line| wrapped_rows(line, text_width))
            .sum();
        let height = to_u16(rows).saturating_add(2);
        (
            message,
            help_column.centered_vertically(Constraint::Length(height)),
        )
    } else {
        let height = to_u16(lines.len()).saturating_add(2);
        if height.saturating_mul(2) > area.height {
            return area;
        }
        let [message, help_area] =
            Layout::vertical([Constraint::Fill(1), Constraint::Length(height)]).areas(area);
        (message, help_area)
    };
    let paragraph = Paragraph::new(lines)
        .wrap(Wrap { trim: false })
        .block(panel.padding(Padding::horizontal(1)));
    frame.render_widget(paragraph, help_area);
    message
}

/// Draws `lines` centred in a framed box sized to them, in the middle of `area`.
fn render_message(frame: &mut Frame, area: Rect, lines: Vec<Line<'static>>, branding: &Branding) {
    let longest = to_u16(lines.iter().map(Line::width).max().unwrap_or(0));
    let width = longest
        .saturating_add(MESSAGE_FRAME_WIDTH)
        .clamp(MESSAGE_MIN_WIDTH, MESSAGE_MAX_WIDTH)
        .min(area.width);
    let text_width = usize::from(width.saturating_sub(MESSAGE_FRAME_WIDTH));
    let rows = to_u16(
        lines
            .iter()
            .map(|line| wrapped_rows(line, text_width))
            .sum(),
    );
    let fits_padding = rows.saturating_add(4) <= area.height;
    let padding = Padding::symmetric(2, u16::from(fits_padding));
    let height = rows
        .saturating_add(if fits_padding { 4 } else { 2 })
        .min(area.height);
    let frame_block = Block::bordered()
        .border_type(BorderType::Rounded)
        .border_style(Style::new().fg(branding.primary))
        .padding(padding);
    let message = Paragraph::new(lines)
        .alignment(Alignment::Center)
        .wrap(Wrap { trim: true })
        .block(frame_block);
    frame.render_widget(
        message,
        area.centered(Constraint::Length(width), Constraint::Length(height)),
    );
}

/// The status line's two parts: the reader and the server, then the device and the clock.
fn status_lines(view: &View) -> (Line<'static>, Line<'static>) {
    let filtered_out = matches!(view.state, State::ReaderMissing { notice } if notice.code == NoticeCode::NoMatchingReader);
    let reader = match view.readers.len() {
        0 if filtered_out => Span::styled("No reader this kiosk is set up for", WARNING),
        0 => Span::styled("No reader — connect a reader", WARNING),
        1 => Span::raw(format!("Reader: {}", join(view.readers))),
        _ => Span::raw(format!("Readers: {}", join(view.readers))),
    };
    let mut connections = vec![Span::raw(" "), reader, Span::raw(" · ")];
    connections.extend(server_status(view));
    let connections = Line::from(connections);
    let device_and_clock = Line::from(format!(" {} · {} ", view.device, clock_time(view.clock)));
    (connections, device_and_clock)
}

/// The server's part of the status line: connected, or what is wrong and when it was last seen.
fn server_status(view: &View) -> Vec<Span<'static>> {
    let problem = match view.server {
        ServerStatus::Connected if view.server_last_seen.is_some() => {
            return vec![Span::raw("Server: connected")];
        }
        ServerStatus::Connected => return vec![Span::raw("Server: connecting…")],
        ServerStatus::Unreachable => "Server unreachable — retrying".to_owned(),
        ServerStatus::Untrusted => "Server not trusted — ask IT".to_owned(),
        ServerStatus::Refusing { code } => format!("Server refuses this device ({code})"),
    };
    let seen = match view.server_last_seen {
        Some(at) => {
            let ago = view.now.saturating_duration_since(at);
            let ago = time::Duration::try_from(ago).unwrap_or(time::Duration::ZERO);
            format!(" · last seen {}", clock_time(view.clock - ago))
        }
        None => " · never reached".to_owned(),
    };
    vec![Span::styled(problem, WARNING), Span::raw(seen)]
}

/// Draws the status in one row, or in two when the screen is too narrow for one.
fn render_status(
    frame: &mut Frame,
    area: Rect,
    connections: Line<'static>,
    device_and_clock: Line<'static>,
) {
    let (left, right) = if area.height >= 2 {
        let [top, bottom] =
            Layout::vertical([Constraint::Length(1), Constraint::Length(1)]).areas(area);
        (top, bottom)
    } else {
        let width = to_u16(device_and_clock.width());
        let [left, right] =
            Layout::horizontal([Constraint::Fill(1), Constraint::Length(width)]).areas(area);
        (left, right)
    };
    frame.render_widget(Paragraph::new(connections), left);
    frame.render_widget(
        Paragraph::new(device_and_clock).alignment(Alignment::Right),
        right,
    );
}

/// How many rows `line` takes when wrapped at spaces to `width` columns (words longer than a row
/// are broken), as a wrapping paragraph shows it.
fn wrapped_rows(line: &Line, width: usize) -> usize {
    let width = width.max(1);
    let mut rows = 1;
    let mut used = 0;
    // Splitting at single spaces keeps runs of spaces: each empty word is one more space.
    for word in line.spans.iter().flat_map(|span| span.content.split(' ')) {
        let word_width = Span::raw(word).width();
        if used > 0 && used + 1 + word_width <= width {
            used += 1 + word_width;
            continue;
        }
        if used > 0 {
            rows += 1;
        }
        rows += word_width.saturating_sub(1) / width;
        used = word_width - word_width.saturating_sub(1) / width * width;
    }
    rows
}

/// The message for the current state, its big line first.
fn message_lines(view: &View) -> Vec<Line<'static>> {
    let headline_style = Style::new()
        .fg(view.branding.accent)
        .add_modifier(Modifier::BOLD);
    let headline = |text: String| Line::styled(text, headline_style);
    let mut lines = Vec::new();
    match view.state {
        State::ReaderMissing { notice } => {
            lines.push(headline("No card reader".to_owned()));
            push_notice(&mut lines, notice);
        }
        State::WaitingForCard { notice } => {
            lines.push(headline(match view.flow {
                Flow::TapThenPin => "Tap your badge".to_owned(),
                Flow::PinThenTap => "Type your PIN, then tap your badge".to_owned(),
            }));
            if let Some(notice) = notice {
                push_notice(&mut lines, notice);
            }
        }
        State::PinFirst { prompt } => {
            lines.push(headline(if prompt.digits >= PIN_MIN_DIGITS {
                "Now tap your badge".to_owned()
            } else {
                "Type your PIN, then tap your badge".to_owned()
            }));
            lines.push(Line::default());
            push_prompt(&mut lines, prompt, view.now);
            push_hold(&mut lines, prompt, view.now);
            lines.push(Line::default());
            lines.push(Line::styled("Esc to clear", HINT));
        }
        State::ReadingCard { .. } => {
            lines.push(headline("Reading your badge…".to_owned()));
            lines.push(Line::default());
            lines.push(Line::from("Keep it on the reader."));
        }
        State::PinEntry { card, prompt, .. } => {
            lines.push(headline(greeting(card)));
            lines.push(Line::default());
            lines.push(Line::from("Enter your PIN"));
            push_prompt(&mut lines, prompt, view.now);
            lines.push(Line::default());
            lines.push(Line::styled("Enter to sign in · Esc to cancel", HINT));
        }
        State::Working { step, card, .. } => {
            lines.push(headline(step_text(*step).to_owned()));
            lines.push(Line::from(format!("Step {} of 3", step_number(*step))));
            lines.push(Line::default());
            if let Some(card) = card {
                lines.push(Line::from(greeting(card)));
            }
            lines.push(Line::from("Keep your badge on the reader."));
        }
        State::SignedIn {
            pin_change: Some(form),
            ..
        } => {
            lines.push(headline("Change your PIN".to_owned()));
            push_form(&mut lines, form);
        }
        State::PinBlocked {
            unblock: Some(form),
            ..
        } => {
            lines.push(headline("Unblock your badge".to_owned()));
            push_form(&mut lines, form);
        }
        State::SignedIn {
            session,
            next_worker,
            ..
        } => {
            lines.push(headline(format!(
                "Signed in: {}",
                short_name(&session.user.display_name)
            )));
            lines.push(Line::from(format!(
                "since {}",
                signed_in_time(session, view)
            )));
            if let Some(warning) = session.warning {
                let seconds = warning
                    .ends_at
                    .saturating_duration_since(view.now)
                    .as_millis()
                    .div_ceil(1000);
                lines.push(Line::default());
                lines.push(Line::styled(
                    match warning.reason {
                        SignOutReason::Idle => format!(
                            "Signing out in {seconds} s: press any key or tap your badge to stay"
                        ),
                        _ => format!(
                            "Your session ends in {seconds} s: tap your badge to sign in again"
                        ),
                    },
                    CAUTION,
                ));
            }
            lines.push(Line::default());
            lines.push(Line::from("Press S to sign out"));
            lines.push(Line::styled("C to change your PIN", HINT));
            if let Some(prompt) = next_worker {
                lines.push(Line::default());
                lines.push(Line::from(if prompt.digits >= PIN_MIN_DIGITS {
                    "Next worker: now tap your badge"
                } else {
                    "Next worker: type your PIN"
                }));
                push_prompt(&mut lines, prompt, view.now);
                push_hold(&mut lines, prompt, view.now);
            }
        }
        State::PinBlocked { notice, .. } => {
            lines.push(headline("Your PIN is blocked".to_owned()));
            push_notice(&mut lines, notice);
            lines.push(Line::default());
            lines.push(Line::from("Press U to unblock it with your PUK"));
            lines.push(Line::styled("or take your badge off the reader.", HINT));
        }
        State::ServerUnreachable { notice } => {
            let title = match notice.code {
                NoticeCode::ServerUntrusted => "Sign-in server not trusted",
                NoticeCode::ServerRefused => "The sign-in server refuses this device",
                _ => "Cannot reach the sign-in server",
            };
            lines.push(headline(title.to_owned()));
            push_notice(&mut lines, notice);
            lines.push(Line::default());
            lines.push(Line::styled("Retrying…", HINT));
        }
        State::Error { notice, .. } => {
            lines.push(headline("Sign-in did not work".to_owned()));
            push_notice(&mut lines, notice);
        }
    }
    lines
}

/// The administrator's exit: the passcode prompt (masked), or why it cannot be used now.
fn exit_lines(exit: ExitScreen, view: &View) -> Vec<Line<'static>> {
    let headline = Line::styled(
        "Administrator exit",
        Style::new()
            .fg(view.branding.accent)
            .add_modifier(Modifier::BOLD),
    );
    let mut lines = vec![headline, Line::default()];
    match exit {
        ExitScreen::Passcode { typed } => {
            lines.push(Line::from("Enter the exit passcode"));
            lines.push(Line::styled("●".repeat(typed.min(32)), PIN_DOTS));
            lines.push(Line::default());
            lines.push(Line::styled(
                "Enter to stop the kiosk · Esc to go back",
                HINT,
            ));
        }
        ExitScreen::NoPasscode => {
            lines.push(Line::from(
                "No exit passcode is set for this kiosk, so it cannot be stopped from here.",
            ));
            lines.push(Line::from(
                "Stop it from its service manager (systemctl stop) or with a signal (SIGTERM).",
            ));
            lines.push(Line::styled(
                "To allow this exit, run pivtap kiosk set-exit-passcode.",
                HINT,
            ));
        }
        ExitScreen::Wrong { retry_at } => {
            let seconds = retry_at
                .saturating_duration_since(view.now)
                .as_millis()
                .div_ceil(1000);
            lines.push(Line::styled("Wrong passcode.", WARNING));
            if seconds > 0 {
                lines.push(Line::styled(format!("Try again in {seconds} s"), CAUTION));
            }
        }
    }
    lines
}

/// A PIN change or unblock: what to type (masked), the card at work, or how it ended.
fn push_form(lines: &mut Vec<Line<'static>>, form: &PinForm) {
    lines.push(Line::default());
    let typing = |what: &str| Some(what.to_owned());
    let asked = match form.step {
        PinFormStep::CurrentPin => typing("Enter your current PIN"),
        PinFormStep::Puk => typing("Enter your PUK (unblocking key)"),
        PinFormStep::NewPin => typing("Choose a new PIN"),
        PinFormStep::RepeatNewPin => typing("Type the new PIN again"),
        PinFormStep::TapBadge | PinFormStep::Working { .. } | PinFormStep::Finished => None,
    };
    match (&form.step, asked) {
        (_, Some(what)) => {
            lines.push(Line::from(what));
            lines.push(Line::styled("●".repeat(form.digits), PIN_DOTS));
            if let Some(tries_left) = form.tries_left {
                let words = if tries_left == 1 { "try" } else { "tries" };
                let style = if tries_left <= 1 {
                    WARNING
                } else {
                    Style::new().add_modifier(Modifier::BOLD)
                };
                lines.push(Line::styled(format!("{tries_left} {words} left"), style));
            }
            if let Some(notice) = &form.notice {
                lines.push(Line::from(notice.message.clone()));
            }
            lines.push(Line::default());
            lines.push(Line::styled("Enter to continue · Esc to cancel", HINT));
        }
        (PinFormStep::TapBadge, None) => {
            if let Some(notice) = &form.notice {
                lines.push(Line::from(notice.message.clone()));
            }
            lines.push(Line::default());
            lines.push(Line::styled("Esc to cancel", HINT));
        }
        (PinFormStep::Working { .. }, None) => {
            lines.push(Line::from(match form.purpose {
                PinFormPurpose::ChangePin => "Changing the PIN…",
                PinFormPurpose::Unblock => "Unblocking…",
            }));
            lines.push(Line::from("Keep your badge on the reader."));
        }
        (_, None) => {
            if let Some(notice) = &form.notice {
                lines.push(Line::from(notice.message.clone()));
            }
            lines.push(Line::default());
            lines.push(Line::styled("Press any key", HINT));
        }
    }
}

/// A blank line, then the notice's words.
fn push_notice(lines: &mut Vec<Line<'static>>, notice: &Notice) {
    lines.push(Line::default());
    lines.push(Line::from(notice.message.clone()));
}

/// The masked PIN, the tries left when few, the wait after a wrong PIN, and the prompt's notice.
fn push_prompt(lines: &mut Vec<Line<'static>>, prompt: &PinPrompt, now: Instant) {
    lines.push(Line::styled("●".repeat(prompt.digits), PIN_DOTS));
    if let Some(tries_left) = prompt.tries_left.filter(|tries| *tries < 3) {
        let (words, style) = match tries_left {
            0 | 1 => ("try", WARNING),
            _ => ("tries", Style::new().add_modifier(Modifier::BOLD)),
        };
        lines.push(Line::styled(format!("{tries_left} {words} left"), style));
    }
    let wait_seconds = prompt
        .retry_at
        .map(|at| at.saturating_duration_since(now))
        .filter(|wait| !wait.is_zero())
        .map(|wait| wait.as_millis().div_ceil(1000));
    match (wait_seconds, &prompt.notice) {
        (Some(seconds), Some(notice)) if notice.code == NoticeCode::WrongPin => {
            lines.push(Line::styled(
                format!("Wrong PIN. Wait {seconds} s"),
                CAUTION,
            ));
        }
        (Some(seconds), notice) => {
            if let Some(notice) = notice {
                lines.push(Line::from(notice.message.clone()));
            }
            lines.push(Line::styled(format!("Wait {seconds} s"), CAUTION));
        }
        (None, Some(notice)) => lines.push(Line::from(notice.message.clone())),
        (None, None) => {}
    }
}

/// PIN then tap: how much longer the typed PIN is kept, counting down.
fn push_hold(lines: &mut Vec<Line<'static>>, prompt: &PinPrompt, now: Instant) {
    if prompt.digits == 0 {
        return;
    }
    let seconds = prompt
        .forget_at
        .saturating_duration_since(now)
        .as_millis()
        .div_ceil(1000);
    lines.push(Line::styled(
        format!("PIN kept for {seconds} s, then cleared"),
        HINT,
    ));
}

fn greeting(card: &CardSummary) -> String {
    match &card.holder_name {
        Some(name) => format!("Hello, {}", short_name(name)),
        None => "Hello".to_owned(),
    }
}

/// `name`, cut to [`NAME_MAX_CHARS`] with an ellipsis when longer.
fn short_name(name: &str) -> String {
    if name.chars().count() <= NAME_MAX_CHARS {
        return name.to_owned();
    }
    let mut short: String = name.chars().take(NAME_MAX_CHARS - 1).collect();
    short.push('…');
    short
}

fn step_text(step: Step) -> &'static str {
    match step {
        Step::Verifying => "Checking PIN…",
        Step::Signing => "Signing…",
        Step::SigningIn => "Signing in…",
    }
}

fn step_number(step: Step) -> u8 {
    match step {
        Step::Verifying => 1,
        Step::Signing => 2,
        Step::SigningIn => 3,
    }
}

/// When the session started, on the screen clock's offset.
fn signed_in_time(session: &Session, view: &View) -> String {
    let at = session
        .signed_in_at
        .checked_to_offset(view.clock.offset())
        .unwrap_or(session.signed_in_at);
    clock_time(at)
}

/// `HH:MM`.
fn clock_time(at: OffsetDateTime) -> String {
    format!("{:02}:{:02}", at.hour(), at.minute())
}

fn join(readers: &BTreeSet<String>) -> String {
    readers
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

fn to_u16(value: usize) -> u16 {
    u16::try_from(value).unwrap_or(u16::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crossterm::event::KeyEventState;
    use pivtap_protocol::wire::{ErrorCode, UserInfo};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use ratatui::buffer::Buffer;

    use super::*;
    use crate::core::{AuthFailure, CoreConfig, Effect, Event, Kiosk, PinWorkFailure, WorkId};

    const DESK: &str = "Desk reader";
    const ALICE_PIN: &str = "918273";

    fn alice() -> UserInfo {
        UserInfo {
            id: "u-alice".to_owned(),
            display_name: "Alice Field".to_owned(),
            mail: None,
        }
    }

    fn alice_card() -> CardSummary {
        CardSummary {
            holder_name: Some("Alice Field".to_owned()),
            card_guid: None,
        }
    }

    fn branding() -> Branding {
        Branding {
            organisation: "Northwind Water".to_owned(),
            primary: Color::Blue,
            accent: Color::White,
        }
    }

    /// 14:05 UTC on a fixed day.
    fn clock() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_750_169_100).unwrap()
    }

    /// A kiosk with a clock and the desk reader connected, driven through its events.
    struct Driver {
        kiosk: Kiosk,
        now: Instant,
        flow: Flow,
        work: Option<WorkId>,
    }

    impl Driver {
        fn new(flow: Flow) -> Self {
            let mut driver = Driver {
                kiosk: Kiosk::new(CoreConfig {
                    flow,
                    help_contact: "the site office".to_owned(),
                    ..CoreConfig::default()
                }),
                now: Instant::now(),
                flow,
                work: None,
            };
            driver.send(Event::ReaderAdded {
                reader: DESK.to_owned(),
            });
            driver
        }

        fn send(&mut self, event: Event) {
            for effect in self.kiosk.handle_event(event, self.now) {
                if let Effect::ReadCard { work, .. }
                | Effect::Authenticate { work, .. }
                | Effect::ChangePin { work, .. }
                | Effect::UnblockPin { work, .. } = effect
                {
                    self.work = Some(work);
                }
            }
        }

        fn work(&self) -> WorkId {
            self.work.expect("the core asked for card work")
        }

        fn tap(&mut self) {
            self.send(Event::CardPresent {
                reader: DESK.to_owned(),
            });
        }

        fn card_read(&mut self, pin_tries_left: Option<u8>) {
            self.send(Event::CardRead {
                work: self.work(),
                card: alice_card(),
                pin_tries_left,
            });
        }

        fn type_digits(&mut self, digits: &str) {
            for digit in digits.bytes() {
                self.send(Event::Key(KeyInput::Digit(digit - b'0')));
            }
        }

        fn submit(&mut self) {
            self.type_digits(ALICE_PIN);
            self.send(Event::Key(KeyInput::Enter));
        }

        fn fail(&mut self, failure: AuthFailure) {
            self.send(Event::AuthFailed {
                work: self.work(),
                failure,
            });
        }

        fn sign_in(&mut self) {
            self.tap();
            self.card_read(Some(3));
            self.submit();
            self.send(Event::AuthSucceeded {
                work: self.work(),
                user: alice(),
                signed_in_at: clock() - Duration::from_secs(20 * 60),
                expires_at: clock() + Duration::from_secs(3600),
            });
        }

        fn render(&self, width: u16, height: u16) -> Buffer {
            self.render_with(width, height, None)
        }

        fn render_with(&self, width: u16, height: u16, demo_help: Option<&[String]>) -> Buffer {
            render_state(
                self.kiosk.state(),
                self.flow,
                self.now,
                width,
                height,
                demo_help,
            )
        }
    }

    fn render_state(
        state: &State,
        flow: Flow,
        now: Instant,
        width: u16,
        height: u16,
        demo_help: Option<&[String]>,
    ) -> Buffer {
        let readers = BTreeSet::from([DESK.to_owned()]);
        render_view(
            &View {
                state,
                flow,
                readers: &readers,
                server: ServerStatus::Connected,
                server_last_seen: Some(now),
                branding: &branding(),
                device: "kiosk-07",
                now,
                clock: clock(),
                demo_help,
                exit: None,
                waiting_worker: None,
            },
            width,
            height,
        )
    }

    static BRANDING: std::sync::LazyLock<Branding> = std::sync::LazyLock::new(branding);

    /// The driver's screen over `readers`, as the terminal face draws it (the server as the
    /// kiosk knows it, no demo panel, no administrator's exit, no switch under way).
    fn view_of<'a>(driver: &'a Driver, readers: &'a BTreeSet<String>) -> View<'a> {
        View {
            state: driver.kiosk.state(),
            flow: driver.flow,
            readers,
            server: driver.kiosk.server_status(),
            server_last_seen: driver.kiosk.server_last_seen(),
            branding: &BRANDING,
            device: "kiosk-07",
            now: driver.now,
            clock: clock(),
            demo_help: None,
            exit: None,
            waiting_worker: None,
        }
    }

    fn render_view(view: &View, width: u16, height: u16) -> Buffer {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|frame| render(frame, view)).unwrap();
        terminal.backend().buffer().clone()
    }

    fn rows(buffer: &Buffer) -> Vec<String> {
        buffer
            .content
            .chunks(usize::from(buffer.area.width).max(1))
            .map(|row| row.iter().map(|cell| cell.symbol()).collect())
            .collect()
    }

    fn screen(buffer: &Buffer) -> String {
        rows(buffer).join("\n")
    }

    /// The words on screen without frames, in reading order, so wrapped sentences read whole.
    fn prose(buffer: &Buffer) -> String {
        screen(buffer)
            .replace(['│', '╭', '╮', '╰', '╯', '─'], " ")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[track_caller]
    fn assert_shows(buffer: &Buffer, texts: &[&str]) {
        let (screen, prose) = (screen(buffer), prose(buffer));
        for text in texts {
            assert!(
                screen.contains(text) || prose.contains(text),
                "{text:?} not on screen:\n{screen}"
            );
        }
    }

    /// Where `text` starts on screen: (column, row).
    #[track_caller]
    fn position_of(buffer: &Buffer, text: &str) -> (u16, u16) {
        let (column, row) = rows(buffer)
            .iter()
            .enumerate()
            .find_map(|(row, line)| {
                let start = line.find(text)?;
                Some((line[..start].chars().count(), row))
            })
            .unwrap_or_else(|| panic!("{text:?} not on screen:\n{}", screen(buffer)));
        (u16::try_from(column).unwrap(), u16::try_from(row).unwrap())
    }

    /// The cell where `text` starts on screen.
    #[track_caller]
    fn cell_of<'a>(buffer: &'a Buffer, text: &str) -> &'a ratatui::buffer::Cell {
        buffer.cell(position_of(buffer, text)).unwrap()
    }

    #[test]
    fn waiting_shows_the_organisation_the_big_message_and_the_status() {
        let driver = Driver::new(Flow::TapThenPin);
        let buffer = driver.render(80, 24);
        assert_shows(
            &buffer,
            &[
                "Northwind Water",
                "Tap your badge",
                "Reader: Desk reader",
                "Server: connected",
                "kiosk-07",
                "14:05",
            ],
        );
        let name = cell_of(&buffer, "Northwind Water");
        assert_eq!((name.fg, name.bg), (Color::White, Color::Blue));
        assert!(name.modifier.contains(Modifier::BOLD));
        let headline = cell_of(&buffer, "Tap your badge");
        assert!(headline.modifier.contains(Modifier::BOLD));
    }

    #[test]
    fn waiting_in_pin_then_tap_asks_for_the_pin_first() {
        let driver = Driver::new(Flow::PinThenTap);
        assert_shows(
            &driver.render(80, 24),
            &["Type your PIN, then tap your badge"],
        );
    }

    #[test]
    fn waiting_shows_the_last_notice_in_plain_words() {
        let mut driver = Driver::new(Flow::TapThenPin);
        driver.sign_in();
        driver.send(Event::SignOutRequested);
        assert_shows(
            &driver.render(80, 24),
            &["Tap your badge", "Alice Field is signed out."],
        );
    }

    #[test]
    fn pin_first_masks_the_digits_then_asks_for_the_tap() {
        let mut driver = Driver::new(Flow::PinThenTap);
        driver.type_digits("9182");
        let buffer = driver.render(80, 24);
        assert_shows(&buffer, &["●●●●", "Type your PIN, then tap your badge"]);
        assert!(!screen(&buffer).contains("●●●●●"));
        driver.type_digits("73");
        let buffer = driver.render(80, 24);
        assert_shows(&buffer, &["●●●●●●", "Now tap your badge"]);
        assert!(!screen(&buffer).contains(ALICE_PIN));
    }

    #[test]
    fn the_held_pin_counts_down_its_hold_time() {
        let mut driver = Driver::new(Flow::PinThenTap);
        driver.type_digits("918273");
        assert_shows(&driver.render(80, 24), &["PIN kept for 30 s, then cleared"]);
        driver.now += Duration::from_millis(12_500);
        assert_shows(&driver.render(80, 24), &["PIN kept for 18 s, then cleared"]);
        // Typing again starts the hold over.
        driver.type_digits("4");
        assert_shows(&driver.render(80, 24), &["PIN kept for 30 s, then cleared"]);
    }

    #[test]
    fn the_administrators_exit_covers_the_message_and_masks_the_passcode() {
        let mut driver = Driver::new(Flow::TapThenPin);
        driver.sign_in();
        let readers = BTreeSet::from([DESK.to_owned()]);
        let render_exit = |exit| {
            let view = View {
                exit: Some(exit),
                ..view_of(&driver, &readers)
            };
            render_view(&view, 80, 24)
        };
        let buffer = render_exit(ExitScreen::Passcode { typed: 5 });
        assert_shows(
            &buffer,
            &["Administrator exit", "Enter the exit passcode", "●●●●●"],
        );
        assert!(!screen(&buffer).contains("Signed in: Alice Field"));
        assert_shows(
            &render_exit(ExitScreen::NoPasscode),
            &["No exit passcode is set", "SIGTERM"],
        );
        let retry_at = driver.now + Duration::from_millis(4200);
        assert_shows(
            &render_exit(ExitScreen::Wrong { retry_at }),
            &["Wrong passcode.", "Try again in 5 s"],
        );
    }

    #[test]
    fn a_switch_says_who_stays_signed_in_until_the_new_pin_is_accepted() {
        let mut driver = Driver::new(Flow::TapThenPin);
        driver.sign_in();
        driver.send(Event::CardPresent {
            reader: "NFC reader".to_owned(),
        });
        driver.send(Event::CardRead {
            work: driver.work(),
            card: CardSummary {
                holder_name: Some("Bob Line".to_owned()),
                card_guid: Some("ff".repeat(16)),
            },
            pin_tries_left: Some(3),
        });
        let readers = BTreeSet::from([DESK.to_owned()]);
        let view = View {
            waiting_worker: driver
                .kiosk
                .switching_from()
                .map(|session| session.user.display_name.as_str()),
            ..view_of(&driver, &readers)
        };
        let buffer = render_view(&view, 80, 24);
        assert_shows(
            &buffer,
            &[
                "Hello, Bob Line",
                "Alice Field stays signed in until your PIN is accepted",
            ],
        );
    }

    #[test]
    fn reader_missing_says_what_to_do() {
        let mut driver = Driver::new(Flow::TapThenPin);
        driver.send(Event::ReaderRemoved {
            reader: DESK.to_owned(),
        });
        let readers = BTreeSet::new();
        let buffer = render_view(&view_of(&driver, &readers), 80, 24);
        assert_shows(
            &buffer,
            &[
                "No card reader",
                "Plug in the card reader.",
                "No reader — connect a reader",
            ],
        );
        assert_eq!(
            cell_of(&buffer, "No reader — connect a reader").fg,
            Color::LightRed
        );
    }

    #[test]
    fn reading_card_asks_to_keep_the_badge_still() {
        let mut driver = Driver::new(Flow::TapThenPin);
        driver.tap();
        assert_shows(
            &driver.render(80, 24),
            &["Reading your badge…", "Keep it on the reader."],
        );
    }

    #[test]
    fn pin_entry_greets_the_holder_and_masks_the_pin() {
        let mut driver = Driver::new(Flow::TapThenPin);
        driver.tap();
        driver.card_read(Some(3));
        driver.type_digits("9182");
        let buffer = driver.render(80, 24);
        assert_shows(
            &buffer,
            &[
                "Hello, Alice Field",
                "Enter your PIN",
                "●●●●",
                "Esc to cancel",
            ],
        );
        let screen = screen(&buffer);
        assert!(!screen.contains("tries left"), "{screen}");
        assert!(!screen.contains("9182"), "{screen}");
    }

    #[test]
    fn pin_entry_without_a_holder_name_just_says_hello() {
        let mut driver = Driver::new(Flow::TapThenPin);
        driver.tap();
        driver.send(Event::CardRead {
            work: driver.work(),
            card: CardSummary::default(),
            pin_tries_left: None,
        });
        let screen = screen(&driver.render(80, 24));
        assert!(screen.contains("Hello"), "{screen}");
        assert!(!screen.contains("Hello,"), "{screen}");
    }

    #[test]
    fn a_wrong_pin_shows_the_tries_left_and_counts_down_the_wait() {
        let mut driver = Driver::new(Flow::TapThenPin);
        driver.tap();
        driver.card_read(Some(3));
        driver.submit();
        driver.fail(AuthFailure::WrongPin {
            tries_left: Some(2),
        });
        assert_shows(
            &driver.render(80, 24),
            &["2 tries left", "Wrong PIN. Wait 1 s"],
        );
        driver.now += Duration::from_secs(1);
        driver.send(Event::Tick);
        driver.submit();
        driver.fail(AuthFailure::WrongPin {
            tries_left: Some(1),
        });
        // The second wrong PIN in a row: a 2 s pause.
        let buffer = driver.render(80, 24);
        assert_shows(&buffer, &["1 try left", "Wrong PIN. Wait 2 s"]);
        assert_eq!(cell_of(&buffer, "1 try left").fg, Color::LightRed);
        assert_eq!(cell_of(&buffer, "Wrong PIN. Wait").fg, Color::Yellow);

        driver.now += Duration::from_millis(500);
        assert_shows(&driver.render(80, 24), &["Wrong PIN. Wait 2 s"]);
        driver.now += Duration::from_millis(1000);
        assert_shows(&driver.render(80, 24), &["Wrong PIN. Wait 1 s"]);
        driver.now += Duration::from_millis(500);
        driver.send(Event::Tick);
        let screen = screen(&driver.render(80, 24));
        assert!(screen.contains("1 try left before the badge is blocked."));
        assert!(!screen.contains("Wait"), "{screen}");
    }

    #[test]
    fn two_tries_left_are_shown_without_the_warning_colour() {
        let mut driver = Driver::new(Flow::TapThenPin);
        driver.tap();
        driver.card_read(Some(2));
        let buffer = driver.render(80, 24);
        assert_shows(&buffer, &["2 tries left"]);
        assert_eq!(cell_of(&buffer, "2 tries left").fg, Color::Reset);
    }

    #[test]
    fn working_shows_each_step() {
        let mut driver = Driver::new(Flow::TapThenPin);
        driver.tap();
        driver.card_read(Some(3));
        driver.submit();
        assert_shows(
            &driver.render(80, 24),
            &["Checking PIN…", "Step 1 of 3", "Hello, Alice Field"],
        );
        for (step, text) in [
            (Step::Signing, "Signing…"),
            (Step::SigningIn, "Signing in…"),
        ] {
            driver.send(Event::AuthProgress {
                work: driver.work(),
                step,
            });
            assert_shows(&driver.render(80, 24), &[text]);
        }
    }

    #[test]
    fn signed_in_shows_the_name_the_time_and_how_to_sign_out() {
        let mut driver = Driver::new(Flow::TapThenPin);
        driver.sign_in();
        assert_shows(
            &driver.render(80, 24),
            &[
                "Signed in: Alice Field",
                "since 13:45",
                "Press S to sign out",
            ],
        );
    }

    #[test]
    fn a_session_about_to_end_shows_a_countdown_and_how_to_stay() {
        let mut driver = Driver::new(Flow::TapThenPin);
        driver.kiosk = Kiosk::new(CoreConfig {
            session: crate::core::SessionPolicy {
                sign_out_on_removal: false,
                ..crate::core::SessionPolicy::default()
            },
            ..CoreConfig::default()
        });
        driver.send(Event::ReaderAdded {
            reader: DESK.to_owned(),
        });
        driver.sign_in();
        driver.now += Duration::from_secs(15 * 60 - 30);
        driver.send(Event::Tick);
        driver.now += Duration::from_secs(5);
        assert_shows(
            &driver.render(100, 24),
            &["Signing out in 25 s: press any key or tap your badge to stay"],
        );
        driver.send(Event::Key(KeyInput::Other));
        assert!(!screen(&driver.render(100, 24)).contains("Signing out in"));
    }

    #[test]
    fn signed_in_shows_the_next_workers_masked_pin() {
        let mut driver = Driver::new(Flow::PinThenTap);
        driver.type_digits(ALICE_PIN);
        driver.tap();
        driver.card_read(Some(3));
        driver.send(Event::AuthSucceeded {
            work: driver.work(),
            user: alice(),
            signed_in_at: clock(),
            expires_at: clock() + Duration::from_secs(3600),
        });
        driver.type_digits("55512");
        assert_shows(
            &driver.render(80, 24),
            &[
                "Signed in: Alice Field",
                "Next worker: type your PIN",
                "●●●●●",
            ],
        );
        driver.type_digits("3");
        let buffer = driver.render(80, 24);
        assert_shows(&buffer, &["Next worker: now tap your badge", "●●●●●●"]);
        assert!(!screen(&buffer).contains("555123"));
    }

    #[test]
    fn pin_blocked_says_whom_to_ask() {
        let mut driver = Driver::new(Flow::TapThenPin);
        driver.tap();
        driver.card_read(Some(3));
        driver.submit();
        driver.fail(AuthFailure::PinBlocked);
        assert_shows(
            &driver.render(80, 24),
            &["Your PIN is blocked", "Ask the site office to unblock it."],
        );
    }

    /// Types `digits` and Enter.
    fn enter(driver: &mut Driver, digits: &str) {
        driver.type_digits(digits);
        driver.send(Event::Key(KeyInput::Enter));
    }

    #[test]
    fn the_pin_change_screens_mask_every_value_and_say_what_is_next() {
        let mut driver = Driver::new(Flow::TapThenPin);
        driver.sign_in();
        assert_shows(&driver.render(80, 24), &["C to change your PIN"]);
        driver.send(Event::ChangePinRequested);
        driver.type_digits("91827");
        let buffer = driver.render(80, 24);
        assert_shows(
            &buffer,
            &[
                "Change your PIN",
                "Enter your current PIN",
                "●●●●●",
                "Esc to cancel",
            ],
        );
        driver.type_digits("3");
        driver.send(Event::Key(KeyInput::Enter));
        assert_shows(&driver.render(80, 24), &["Choose a new PIN"]);
        enter(&mut driver, "345678");
        assert_shows(
            &driver.render(80, 24),
            &["Choose a new PIN", "This PIN cannot be used"],
        );
        enter(&mut driver, "240913");
        driver.type_digits("24");
        assert_shows(&driver.render(80, 24), &["Type the new PIN again", "●●"]);
        driver.type_digits("0913");
        driver.send(Event::Key(KeyInput::Enter));
        let buffer = driver.render(80, 24);
        assert_shows(
            &buffer,
            &["Changing the PIN…", "Keep your badge on the reader."],
        );
        for secret in ["918273", "240913", "345678"] {
            assert!(!screen(&buffer).contains(secret));
        }
        driver.send(Event::PinWorkDone {
            work: driver.work(),
            result: Err(PinWorkFailure::WrongPin {
                tries_left: Some(1),
            }),
        });
        assert_shows(
            &driver.render(80, 24),
            &["Enter your current PIN", "1 try left", "Wrong current PIN."],
        );
        enter(&mut driver, "918273");
        enter(&mut driver, "240913");
        enter(&mut driver, "240913");
        driver.send(Event::PinWorkDone {
            work: driver.work(),
            result: Ok(()),
        });
        assert_shows(
            &driver.render(80, 24),
            &["Your PIN is changed.", "Press any key"],
        );
        driver.send(Event::Key(KeyInput::Enter));
        assert_shows(&driver.render(80, 24), &["Signed in: Alice Field"]);
    }

    #[test]
    fn the_blocked_screen_offers_the_puk_and_the_unblock_screens_follow() {
        let mut driver = Driver::new(Flow::TapThenPin);
        driver.tap();
        driver.card_read(Some(0));
        assert_shows(
            &driver.render(80, 24),
            &["Your PIN is blocked", "Press U to unblock it with your PUK"],
        );
        driver.send(Event::UnblockRequested);
        driver.type_digits("1234");
        assert_shows(
            &driver.render(80, 24),
            &["Unblock your badge", "Enter your PUK", "●●●●"],
        );
        driver.type_digits("5678");
        driver.send(Event::Key(KeyInput::Enter));
        enter(&mut driver, "240913");
        driver.send(Event::CardRemoved {
            reader: DESK.to_owned(),
        });
        enter(&mut driver, "240913");
        assert_shows(
            &driver.render(80, 24),
            &["Tap your badge and keep it on the reader to unblock it."],
        );
        driver.tap();
        assert_shows(&driver.render(80, 24), &["Unblocking…"]);
        driver.send(Event::PinWorkDone {
            work: driver.work(),
            result: Err(PinWorkFailure::PukBlocked),
        });
        assert_shows(
            &driver.render(80, 24),
            &["Your PIN is blocked", "The PUK is blocked too"],
        );
    }

    #[test]
    fn the_status_line_tells_server_problems_apart_and_when_it_was_last_seen() {
        let mut driver = Driver::new(Flow::TapThenPin);
        let readers = BTreeSet::from([DESK.to_owned()]);
        let show = |driver: &Driver| screen(&render_view(&view_of(driver, &readers), 120, 24));
        // Before the first answer the kiosk does not claim a connection.
        assert!(show(&driver).contains("Server: connecting…"));
        driver.send(Event::ServerReachable);
        assert!(show(&driver).contains("Server: connected"));
        // Two minutes later the server is not trusted: it was last seen two minutes ago.
        driver.now += Duration::from_secs(120);
        let seen_at = clock_time(clock() - time::Duration::seconds(120));
        driver.send(Event::ServerUntrusted);
        let screen = show(&driver);
        for expected in [
            "Sign-in server not trusted",
            "This device does not trust the sign-in server",
            "Server not trusted — ask IT",
        ] {
            assert!(screen.contains(expected), "{expected:?} in\n{screen}");
        }
        assert!(screen.contains(&format!("last seen {seen_at}")), "{screen}");
        driver.send(Event::ServerRefusing {
            code: ErrorCode::DeviceDisabled,
        });
        let screen = show(&driver);
        for expected in [
            "The sign-in server refuses this device",
            "This device is switched off at the sign-in server",
            "Server refuses this device (device_disabled)",
        ] {
            assert!(screen.contains(expected), "{expected:?} in\n{screen}");
        }
        assert!(!screen.contains("Server: connected"), "{screen}");
    }

    #[test]
    fn server_unreachable_says_it_is_retrying() {
        let mut driver = Driver::new(Flow::TapThenPin);
        driver.send(Event::ServerUnreachable);
        let readers = BTreeSet::from([DESK.to_owned()]);
        let buffer = render_view(&view_of(&driver, &readers), 100, 24);
        assert_shows(
            &buffer,
            &[
                "Cannot reach the sign-in server",
                "Retrying…",
                "Server unreachable — retrying",
            ],
        );
    }

    #[test]
    fn errors_are_shown_in_plain_words_without_codes() {
        let mut driver = Driver::new(Flow::TapThenPin);
        driver.tap();
        driver.card_read(Some(3));
        driver.submit();
        driver.fail(AuthFailure::ServerRefused {
            code: ErrorCode::CertificateRevoked,
        });
        let buffer = driver.render(80, 24);
        assert_shows(
            &buffer,
            &[
                "Sign-in did not work",
                "This badge is no longer valid. Ask the site office.",
            ],
        );
        let screen = screen(&buffer);
        assert!(!screen.contains("certificate_revoked"), "{screen}");
        assert!(!screen.contains("server_refused"), "{screen}");
    }

    #[test]
    fn the_demo_panel_sits_beside_or_below_the_message() {
        let driver = Driver::new(Flow::TapThenPin);
        let help = [
            "F1  Tap Alice's badge".to_owned(),
            "Alice's PIN 123456".to_owned(),
        ];
        let wide = driver.render_with(80, 24, Some(&help));
        assert_shows(&wide, &["Demo", "Alice's PIN 123456", "Tap your badge"]);
        let (help_column, _) = position_of(&wide, "F1  Tap Alice's badge");
        let (message_column, _) = position_of(&wide, "Tap your badge");
        assert!(help_column > message_column + 14, "{}", screen(&wide));

        let narrow = driver.render_with(40, 24, Some(&help));
        assert_shows(&narrow, &["Demo", "Alice's PIN 123456", "Tap your badge"]);
        let (_, help_row) = position_of(&narrow, "F1  Tap Alice's badge");
        let (_, message_row) = position_of(&narrow, "Tap your badge");
        assert!(help_row > message_row, "{}", screen(&narrow));

        assert!(!screen(&driver.render(80, 24)).contains("Demo"));
    }

    #[test]
    fn long_names_and_small_terminals_do_not_panic() {
        let long = "The Very Long Name of an Organisation ".repeat(8);
        let mut driver = Driver::new(Flow::TapThenPin);
        driver.tap();
        driver.send(Event::CardRead {
            work: driver.work(),
            card: CardSummary {
                holder_name: Some(format!("Alice {long}\u{1b}[31m")),
                card_guid: None,
            },
            pin_tries_left: Some(1),
        });
        let readers = BTreeSet::from([long.clone(), DESK.to_owned()]);
        let branding = Branding {
            organisation: long.clone(),
            ..branding()
        };
        let help = vec![long.clone(); 30];
        for (width, height) in [(80, 24), (40, 12), (20, 6), (1, 1), (0, 0)] {
            for demo_help in [None, Some(help.as_slice())] {
                let view = View {
                    state: driver.kiosk.state(),
                    flow: Flow::TapThenPin,
                    readers: &readers,
                    server: driver.kiosk.server_status(),
                    server_last_seen: driver.kiosk.server_last_seen(),
                    branding: &branding,
                    device: &long,
                    now: driver.now,
                    clock: clock(),
                    demo_help,
                    exit: None,
                    waiting_worker: None,
                };
                let buffer = render_view(&view, width, height);
                assert!(!screen(&buffer).contains('\u{1b}'));
            }
        }
        let wide = render_state(
            driver.kiosk.state(),
            Flow::TapThenPin,
            driver.now,
            80,
            24,
            None,
        );
        assert_shows(
            &wide,
            &[
                "Hello, Alice The Very Long Name of an Organisa…",
                "1 try left",
            ],
        );
        let small = render_state(
            driver.kiosk.state(),
            Flow::TapThenPin,
            driver.now,
            40,
            12,
            None,
        );
        assert_shows(&small, &["Hello, Alice", "Enter your PIN"]);
    }

    #[test]
    fn every_screen_fits_a_small_terminal() {
        let mut driver = Driver::new(Flow::TapThenPin);
        assert_shows(&driver.render(40, 12), &["Tap your badge", "Northwind"]);
        driver.sign_in();
        assert_shows(
            &driver.render(40, 12),
            &["Signed in: Alice Field", "Press S to sign out"],
        );
    }

    #[test]
    fn wrapped_rows_counts_rows_as_a_paragraph_wraps() {
        let rows = |text: &'static str, width| wrapped_rows(&Line::from(text), width);
        assert_eq!(rows("", 10), 1);
        assert_eq!(rows("Tap your badge", 14), 1);
        assert_eq!(rows("Tap your badge", 13), 2);
        assert_eq!(rows("Tap your badge", 5), 3);
        assert_eq!(rows("abcdefghij", 4), 3);
        assert_eq!(rows("F2  Take", 7), 2);
        assert_eq!(rows("F2  Take", 8), 1);
        assert_eq!(rows("anything", 0), 8);
    }

    fn press(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn keys_map_to_inputs() {
        for (digit, value) in ('0'..='9').zip(0u8..) {
            assert_eq!(
                key_input(&press(KeyCode::Char(digit))),
                Some(UiKey::Core(KeyInput::Digit(value)))
            );
        }
        let cases = [
            (KeyCode::Backspace, Some(UiKey::Core(KeyInput::Backspace))),
            (KeyCode::Enter, Some(UiKey::Core(KeyInput::Enter))),
            (KeyCode::Esc, Some(UiKey::Core(KeyInput::Escape))),
            (KeyCode::Char('s'), Some(UiKey::SignOut)),
            (KeyCode::Char('S'), Some(UiKey::SignOut)),
            (KeyCode::Char('q'), Some(UiKey::Quit)),
            (KeyCode::Char('Q'), Some(UiKey::Quit)),
            (KeyCode::Char('c'), Some(UiKey::ChangePin)),
            (KeyCode::Char('C'), Some(UiKey::ChangePin)),
            (KeyCode::Char('u'), Some(UiKey::Unblock)),
            (KeyCode::Char('U'), Some(UiKey::Unblock)),
            (KeyCode::F(1), Some(UiKey::Function(1))),
            (KeyCode::F(12), Some(UiKey::Function(12))),
            (KeyCode::F(13), None),
            // Changed on purpose (issue 12): any other key is "any key" for the core.
            (KeyCode::Char('a'), Some(UiKey::Core(KeyInput::Other))),
            (KeyCode::Char(' '), Some(UiKey::Core(KeyInput::Other))),
            (KeyCode::Tab, Some(UiKey::Core(KeyInput::Other))),
            (KeyCode::Delete, Some(UiKey::Core(KeyInput::Other))),
            (KeyCode::Up, Some(UiKey::Core(KeyInput::Other))),
            (KeyCode::CapsLock, None),
        ];
        for (code, expected) in cases {
            assert_eq!(key_input(&press(code)), expected, "{code:?}");
        }
        let shifted_s = KeyEvent::new(KeyCode::Char('S'), KeyModifiers::SHIFT);
        assert_eq!(key_input(&shifted_s), Some(UiKey::SignOut));
    }

    #[test]
    fn control_c_quits_and_other_chords_do_nothing() {
        let chord = |code, modifiers| key_input(&KeyEvent::new(code, modifiers));
        assert_eq!(
            chord(KeyCode::Char('c'), KeyModifiers::CONTROL),
            Some(UiKey::Quit)
        );
        assert_eq!(chord(KeyCode::Char('s'), KeyModifiers::CONTROL), None);
        assert_eq!(chord(KeyCode::Char('1'), KeyModifiers::ALT), None);
        assert_eq!(chord(KeyCode::Char('c'), KeyModifiers::ALT), None);
    }

    #[test]
    fn only_key_presses_count() {
        for kind in [KeyEventKind::Release, KeyEventKind::Repeat] {
            let event = KeyEvent::new_with_kind_and_state(
                KeyCode::Char('1'),
                KeyModifiers::NONE,
                kind,
                KeyEventState::NONE,
            );
            assert_eq!(key_input(&event), None, "{kind:?}");
        }
    }
}
