//! The reader monitor: a background thread that waits on PC/SC `SCardGetStatusChange` (with the PnP pseudo-reader for reader hot-plug) and reports readers and cards coming and going as [`ReaderEvent`]s on a channel, surviving pcscd restarts.

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use ::pcsc::{Context, ReaderState, Scope, State};

use crate::pcsc::{card_atr, is_contactless_atr, is_service_loss, map_error};
use crate::transport::TransportError;

/// The first pause before trying again after the service was lost (or an
/// unexpected error); each failure in a row doubles it up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(200);
/// The longest pause between tries.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);
/// How often [`ReaderMonitor::stop`] cancels the wait again, in case the
/// first cancel came just before the thread started waiting.
const CANCEL_REPEAT: Duration = Duration::from_millis(10);

/// Something that happened to the readers or their cards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReaderEvent {
    /// A reader was connected (or was there when the monitor started).
    ReaderAdded {
        /// The reader's name.
        reader: String,
    },
    /// A reader was disconnected. A card it held is reported removed first.
    ReaderRemoved {
        /// The reader's name.
        reader: String,
    },
    /// A card was inserted or tapped (or was there when the monitor started).
    CardPresent {
        /// The reader's name.
        reader: String,
        /// The card's Answer To Reset.
        atr: Vec<u8>,
        /// Whether the card is reached over a contactless interface, judged
        /// from its ATR.
        contactless: bool,
    },
    /// The card left the reader.
    CardRemoved {
        /// The reader's name.
        reader: String,
    },
    /// The smart card service went away: every reader and card reported so
    /// far is gone. Reported once, however long the service stays away.
    ServiceLost {
        /// What PC/SC reported.
        reason: String,
    },
    /// The service is back; the readers and cards present follow as
    /// `ReaderAdded` and `CardPresent`.
    ServiceRestored,
}

/// Which events a monitor reports. The default reports everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MonitorFilter {
    /// Only readers whose name contains this text (case-sensitive).
    pub reader_name_contains: Option<String>,
    /// Only contactless cards: `CardPresent` and `CardRemoved` of contact
    /// cards are left out (reader and service events still come).
    pub contactless_only: bool,
}

impl MonitorFilter {
    fn accepts_reader(&self, reader: &str) -> bool {
        self.reader_name_contains
            .as_deref()
            .is_none_or(|part| reader.contains(part))
    }

    fn accepts_card(&self, card: &CardSnapshot) -> bool {
        !self.contactless_only || card.contactless
    }
}

/// A running reader monitor. Stop it with [`ReaderMonitor::stop`]; dropping
/// it stops it too.
pub struct ReaderMonitor {
    control: Arc<MonitorControl>,
    thread: Option<JoinHandle<()>>,
}

impl ReaderMonitor {
    /// Starts the monitor thread. It first reports the readers and cards
    /// already present (`ReaderAdded`, then `CardPresent`), then every change.
    ///
    /// The monitor outlives pcscd restarts (see [`ReaderEvent::ServiceLost`]),
    /// but the service must be reachable when it starts.
    ///
    /// # Errors
    /// [`TransportError::ServiceUnavailable`] when pcscd cannot be reached;
    /// [`TransportError::Other`] when the thread cannot be started.
    pub fn start(
        filter: MonitorFilter,
    ) -> Result<(ReaderMonitor, Receiver<ReaderEvent>), TransportError> {
        let context = Context::establish(Scope::User).map_err(|error| map_error(error, None))?;
        let control = Arc::new(MonitorControl {
            state: Mutex::new(ControlState {
                stopping: false,
                context: Some(context.clone()),
            }),
            wake: Condvar::new(),
        });
        let (sender, receiver) = mpsc::channel();
        let worker = MonitorWorker {
            control: Arc::clone(&control),
            filter,
            events: sender,
            reported: BTreeMap::new(),
        };
        let thread = thread::Builder::new()
            .name("pivtap-reader-monitor".to_owned())
            .spawn(move || worker.run(context))
            .map_err(|error| TransportError::Other {
                reason: format!("cannot start the reader monitor thread: {error}"),
            })?;
        Ok((
            ReaderMonitor {
                control,
                thread: Some(thread),
            },
            receiver,
        ))
    }

    /// Stops the monitor: cancels the PC/SC wait and joins the thread. No
    /// event is sent after it returns.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.control.lock().stopping = true;
        self.control.wake.notify_all();
        // A cancel that arrives before the thread starts waiting is lost, so
        // cancel until the thread is gone.
        while !thread.is_finished() {
            if let Some(context) = &self.control.lock().context {
                // Failing to cancel leaves the next try to do it.
                let _ = context.cancel();
            }
            thread::sleep(CANCEL_REPEAT);
        }
        if thread.join().is_err() {
            tracing::error!("the reader monitor thread panicked");
        }
    }
}

impl Drop for ReaderMonitor {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// What the monitor and its thread share.
struct MonitorControl {
    state: Mutex<ControlState>,
    /// Wakes the thread from a retry pause when the monitor stops.
    wake: Condvar,
}

struct ControlState {
    stopping: bool,
    /// The context the thread waits on, for [`ReaderMonitor::stop`] to cancel.
    context: Option<Context>,
}

impl MonitorControl {
    fn lock(&self) -> MutexGuard<'_, ControlState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why the wait loop on one context ended.
enum WaitEnd {
    Stopped,
    ServiceLost(::pcsc::Error),
}

/// The monitor thread's state.
struct MonitorWorker {
    control: Arc<MonitorControl>,
    filter: MonitorFilter,
    events: Sender<ReaderEvent>,
    /// The readers as last reported, unfiltered.
    reported: BTreeMap<String, ReaderSnapshot>,
}

impl MonitorWorker {
    /// Watches on `context` until stopped; when the service is lost, reports
    /// it once and establishes a new context with a growing pause.
    fn run(mut self, mut context: Context) {
        loop {
            let error = match self.watch(&context) {
                WaitEnd::Stopped => return,
                WaitEnd::ServiceLost(error) => error,
            };
            tracing::warn!(%error, "the smart card service was lost");
            self.reported.clear();
            if !self.send(ReaderEvent::ServiceLost {
                reason: map_error(error, None).to_string(),
            }) {
                return;
            }
            let Some(restored) = self.reestablish() else {
                return;
            };
            context = restored;
            tracing::info!("the smart card service is back");
            if !self.send(ReaderEvent::ServiceRestored) {
                return;
            }
        }
    }

    /// Establishes a context, pausing between tries; `None` when stopped.
    fn reestablish(&self) -> Option<Context> {
        self.control.lock().context = None;
        let mut failures = 0u32;
        loop {
            failures = failures.saturating_add(1);
            if self.pause(retry_delay(failures)) {
                return None;
            }
            match Context::establish(Scope::User) {
                Ok(context) => {
                    self.control.lock().context = Some(context.clone());
                    return Some(context);
                }
                Err(error) => {
                    tracing::debug!(%error, "the smart card service is still unavailable");
                }
            }
        }
    }

    /// Waits for changes on `context` and reports them, until stopped or
    /// until the service is lost.
    fn watch(&mut self, context: &Context) -> WaitEnd {
        let mut states = vec![ReaderState::new(::pcsc::PNP_NOTIFICATION(), State::UNAWARE)];
        let mut failures = 0u32;
        loop {
            if self.control.lock().stopping {
                return WaitEnd::Stopped;
            }
            match self.wait_and_report(context, &mut states) {
                Ok(true) => failures = 0,
                Ok(false) => return WaitEnd::Stopped,
                Err(::pcsc::Error::Cancelled | ::pcsc::Error::Timeout) => {}
                Err(error) if is_service_loss(error) => return WaitEnd::ServiceLost(error),
                Err(error) => {
                    // Most likely a reader that vanished between listing and
                    // waiting: look again at once, then with growing pauses,
                    // so no error can make the thread spin.
                    tracing::debug!(%error, "waiting for reader changes failed");
                    failures = failures.saturating_add(1);
                    if failures > 1 && self.pause(retry_delay(failures - 1)) {
                        return WaitEnd::Stopped;
                    }
                }
            }
        }
    }

    /// Brings `states` up to date with the readers attached, waits for the
    /// next change and reports it; `false` when nobody listens any more.
    fn wait_and_report(
        &mut self,
        context: &Context,
        states: &mut Vec<ReaderState>,
    ) -> Result<bool, ::pcsc::Error> {
        refresh_reader_list(context, states)?;
        // Readers gone from the list are reported now, as the wait only ends
        // on the next change. (Their states are no help: a failed wait
        // clears every event state.)
        let still_listed = self
            .reported
            .iter()
            .filter(|(name, _)| {
                states
                    .iter()
                    .any(|state| state.name().to_string_lossy() == name.as_str())
            })
            .map(|(name, reader)| (name.clone(), reader.clone()))
            .collect();
        if !self.report(still_listed) {
            return Ok(false);
        }
        context.get_status_change(None, states)?;
        Ok(self.report(snapshot(states)))
    }

    /// Sends the events that lead from the last report to `current`;
    /// `false` when nobody listens any more.
    fn report(&mut self, current: BTreeMap<String, ReaderSnapshot>) -> bool {
        let events = events_between(&self.reported, &current, &self.filter);
        self.reported = current;
        events.into_iter().all(|event| self.send(event))
    }

    /// Sleeps for `delay` unless stopped first; whether the monitor stops.
    fn pause(&self, delay: Duration) -> bool {
        let state = self.control.lock();
        let (state, _) = self
            .control
            .wake
            .wait_timeout_while(state, delay, |state| !state.stopping)
            .unwrap_or_else(PoisonError::into_inner);
        state.stopping
    }

    /// Sends an event; `false` when nobody listens any more (or the monitor
    /// is stopping), which ends the thread.
    fn send(&self, event: ReaderEvent) -> bool {
        tracing::debug!(?event, "reader event");
        !self.control.lock().stopping && self.events.send(event).is_ok()
    }
}

/// The pause after the `failures`-th failure in a row: 200 ms doubling up to 2 s.
fn retry_delay(failures: u32) -> Duration {
    FIRST_RETRY_DELAY
        .saturating_mul(1 << failures.saturating_sub(1).min(4))
        .min(MAX_RETRY_DELAY)
}

/// Brings the wait list in line with the readers attached: drops readers
/// no longer listed, adds new ones with an unknown state, and takes the last
/// reported state as the state to wait on for the others.
fn refresh_reader_list(
    context: &Context,
    states: &mut Vec<ReaderState>,
) -> Result<(), ::pcsc::Error> {
    let names = context.list_readers_owned()?;
    let pnp = ::pcsc::PNP_NOTIFICATION();
    states.retain(|state| state.name() == pnp || names.iter().any(|name| **name == *state.name()));
    for name in names {
        if !states.iter().any(|state| state.name() == name.as_c_str()) {
            states.push(ReaderState::new(name, State::UNAWARE));
        }
    }
    for state in states.iter_mut() {
        state.sync_current_state();
    }
    Ok(())
}

/// The readers PC/SC has reported a state for, and their cards.
fn snapshot(states: &[ReaderState]) -> BTreeMap<String, ReaderSnapshot> {
    let pnp: &CStr = ::pcsc::PNP_NOTIFICATION();
    states
        .iter()
        .filter(|state| state.name() != pnp)
        .filter(|state| {
            let event = state.event_state();
            event != State::UNAWARE && !event.intersects(State::UNKNOWN | State::IGNORE)
        })
        .map(|state| {
            let card = card_atr(state.event_state(), state.atr()).map(|atr| CardSnapshot {
                contactless: is_contactless_atr(&atr),
                atr,
                event_count: state.event_count(),
            });
            (
                state.name().to_string_lossy().into_owned(),
                ReaderSnapshot { card },
            )
        })
        .collect()
}

/// A reader as last seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ReaderSnapshot {
    card: Option<CardSnapshot>,
}

/// A card as last seen.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CardSnapshot {
    atr: Vec<u8>,
    contactless: bool,
    /// PC/SC's count of insertions and removals in the reader: a card taken
    /// out and put back between two looks changes it.
    event_count: u32,
}

/// The events that lead from `previous` to `current`, in reader-name order:
/// for each reader, a card leaving before the reader, a reader arriving
/// before its card, and a swapped card (another ATR or event count) as
/// `CardRemoved` then `CardPresent`.
fn events_between(
    previous: &BTreeMap<String, ReaderSnapshot>,
    current: &BTreeMap<String, ReaderSnapshot>,
    filter: &MonitorFilter,
) -> Vec<ReaderEvent> {
    let mut names: Vec<&String> = previous.keys().chain(current.keys()).collect();
    names.sort();
    names.dedup();
    let mut events = Vec::new();
    for name in names.into_iter().filter(|name| filter.accepts_reader(name)) {
        let before = previous.get(name);
        let after = current.get(name);
        let card_before = before.and_then(|reader| reader.card.as_ref());
        let card_after = after.and_then(|reader| reader.card.as_ref());
        let reader = || name.clone();
        if before.is_none() && after.is_some() {
            events.push(ReaderEvent::ReaderAdded { reader: reader() });
        }
        if card_before != card_after {
            if card_before.is_some_and(|card| filter.accepts_card(card)) {
                events.push(ReaderEvent::CardRemoved { reader: reader() });
            }
            if let Some(card) = card_after.filter(|card| filter.accepts_card(card)) {
                events.push(ReaderEvent::CardPresent {
                    reader: reader(),
                    atr: card.atr.clone(),
                    contactless: card.contactless,
                });
            }
        }
        if before.is_some() && after.is_none() {
            events.push(ReaderEvent::ReaderRemoved { reader: reader() });
        }
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTACTLESS_ATR: [u8; 5] = [0x3B, 0x80, 0x80, 0x01, 0x01];
    const CONTACT_ATR: [u8; 4] = [0x3B, 0x02, 0x14, 0x50];

    fn card(atr: &[u8], event_count: u32) -> Option<CardSnapshot> {
        Some(CardSnapshot {
            atr: atr.to_vec(),
            contactless: is_contactless_atr(atr),
            event_count,
        })
    }

    fn readers(entries: &[(&str, Option<CardSnapshot>)]) -> BTreeMap<String, ReaderSnapshot> {
        entries
            .iter()
            .map(|(name, card)| ((*name).to_owned(), ReaderSnapshot { card: card.clone() }))
            .collect()
    }

    fn added(reader: &str) -> ReaderEvent {
        ReaderEvent::ReaderAdded {
            reader: reader.to_owned(),
        }
    }

    fn removed(reader: &str) -> ReaderEvent {
        ReaderEvent::ReaderRemoved {
            reader: reader.to_owned(),
        }
    }

    fn present(reader: &str, atr: &[u8]) -> ReaderEvent {
        ReaderEvent::CardPresent {
            reader: reader.to_owned(),
            atr: atr.to_vec(),
            contactless: is_contactless_atr(atr),
        }
    }

    fn card_removed(reader: &str) -> ReaderEvent {
        ReaderEvent::CardRemoved {
            reader: reader.to_owned(),
        }
    }

    fn everything() -> MonitorFilter {
        MonitorFilter::default()
    }

    #[test]
    fn state_changes_become_events() {
        let nfc = "ACS ACR1252 PICC 00 00";
        let desk = "Cherry ST-1144 00 00";
        let cases: Vec<(&str, _, _, Vec<ReaderEvent>)> = vec![
            (
                "nothing changed",
                readers(&[(nfc, None)]),
                readers(&[(nfc, None)]),
                vec![],
            ),
            (
                "a reader appears",
                readers(&[]),
                readers(&[(nfc, None)]),
                vec![added(nfc)],
            ),
            (
                "a reader appears with a card in it",
                readers(&[]),
                readers(&[(nfc, card(&CONTACTLESS_ATR, 1))]),
                vec![added(nfc), present(nfc, &CONTACTLESS_ATR)],
            ),
            (
                "a card is inserted",
                readers(&[(nfc, None), (desk, None)]),
                readers(&[(nfc, None), (desk, card(&CONTACT_ATR, 1))]),
                vec![present(desk, &CONTACT_ATR)],
            ),
            (
                "a card is removed",
                readers(&[(nfc, card(&CONTACTLESS_ATR, 1))]),
                readers(&[(nfc, None)]),
                vec![card_removed(nfc)],
            ),
            (
                "a card is swapped for another",
                readers(&[(desk, card(&CONTACTLESS_ATR, 1))]),
                readers(&[(desk, card(&CONTACT_ATR, 3))]),
                vec![card_removed(desk), present(desk, &CONTACT_ATR)],
            ),
            (
                "the same card is taken out and put back between two looks",
                readers(&[(nfc, card(&CONTACTLESS_ATR, 1))]),
                readers(&[(nfc, card(&CONTACTLESS_ATR, 3))]),
                vec![card_removed(nfc), present(nfc, &CONTACTLESS_ATR)],
            ),
            (
                "a reader is removed with its card",
                readers(&[(desk, None), (nfc, card(&CONTACTLESS_ATR, 1))]),
                readers(&[(desk, None)]),
                vec![card_removed(nfc), removed(nfc)],
            ),
            (
                "an empty reader is removed while another appears: name order",
                readers(&[(desk, None)]),
                readers(&[(nfc, None)]),
                vec![added(nfc), removed(desk)],
            ),
        ];
        for (case, previous, current, expected) in cases {
            assert_eq!(
                events_between(&previous, &current, &everything()),
                expected,
                "{case}"
            );
        }
    }

    #[test]
    fn the_first_look_reports_every_reader_then_its_card() {
        let current = readers(&[
            ("B reader", card(&CONTACT_ATR, 1)),
            ("A reader", None),
            ("C reader", card(&CONTACTLESS_ATR, 5)),
        ]);
        assert_eq!(
            events_between(&BTreeMap::new(), &current, &everything()),
            [
                added("A reader"),
                added("B reader"),
                present("B reader", &CONTACT_ATR),
                added("C reader"),
                present("C reader", &CONTACTLESS_ATR),
            ]
        );
    }

    #[test]
    fn the_name_filter_keeps_matching_readers_only() {
        let filter = MonitorFilter {
            reader_name_contains: Some("PICC".to_owned()),
            contactless_only: false,
        };
        let previous = readers(&[("Desk 00 00", None), ("NFC PICC 00 01", None)]);
        let current = readers(&[
            ("Desk 00 00", card(&CONTACT_ATR, 1)),
            ("NFC PICC 00 01", card(&CONTACT_ATR, 1)),
            ("Other PICC 00 02", None),
        ]);
        assert_eq!(
            events_between(&previous, &current, &filter),
            [
                present("NFC PICC 00 01", &CONTACT_ATR),
                added("Other PICC 00 02")
            ]
        );
        // Case matters.
        let lowercase = MonitorFilter {
            reader_name_contains: Some("picc".to_owned()),
            contactless_only: false,
        };
        assert_eq!(events_between(&previous, &current, &lowercase), []);
    }

    #[test]
    fn the_contactless_filter_keeps_contactless_cards_only() {
        let filter = MonitorFilter {
            reader_name_contains: None,
            contactless_only: true,
        };
        let previous = readers(&[("Desk", card(&CONTACT_ATR, 1)), ("NFC", None)]);
        let current = readers(&[
            ("Desk", None),
            ("NFC", card(&CONTACTLESS_ATR, 1)),
            ("New", card(&CONTACT_ATR, 1)),
        ]);
        assert_eq!(
            events_between(&previous, &current, &filter),
            [present("NFC", &CONTACTLESS_ATR), added("New")]
        );
        // A contactless card swapped for a contact one is only seen leaving.
        let previous = readers(&[("Dual", card(&CONTACTLESS_ATR, 1))]);
        let current = readers(&[("Dual", card(&CONTACT_ATR, 3))]);
        assert_eq!(
            events_between(&previous, &current, &filter),
            [card_removed("Dual")]
        );
    }

    #[test]
    fn retries_back_off_from_200_ms_to_2_s() {
        let delays: Vec<Duration> = (1..=7).map(retry_delay).collect();
        assert_eq!(
            delays,
            [200, 400, 800, 1600, 2000, 2000, 2000].map(Duration::from_millis)
        );
        assert_eq!(retry_delay(u32::MAX), MAX_RETRY_DELAY);
    }
}
