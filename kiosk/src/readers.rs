//! Where badges come from: the system's PC/SC readers or in-process virtual readers, behind one [`ReaderSource`] that reports the same [`ReaderUpdate`]s and hands out the same [`CardBackend`]s, so the kiosk cannot tell them apart.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread;

use pivtap_card::pcsc::{PcscCard, PcscContext};
use pivtap_card::reader_monitor::{MonitorFilter, ReaderEvent, ReaderMonitor};
use pivtap_card::{CardBackend, CardTransaction, LinkCapabilities, TransportError};
use pivtap_vcard::vpcd;
use pivtap_vcard::{Interface, VirtualCardBackend};
use tokio::sync::mpsc::UnboundedSender;

/// Something that happened to the readers or their cards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReaderUpdate {
    /// A reader was connected (or was there when watching started).
    Added(String),
    /// A reader was disconnected; a card it held is reported removed first.
    Removed(String),
    /// A card was inserted or tapped (or was there when watching started).
    CardPresent {
        /// The reader holding it.
        reader: String,
        /// The card's Answer To Reset.
        atr: Vec<u8>,
        /// Whether the card is reached over a contactless interface.
        contactless: bool,
    },
    /// The card left this reader.
    CardRemoved(String),
    /// A reader was connected that the kiosk's reader filter leaves out
    /// ([`FilteredReaders`]); its cards are never reported. `Removed` follows when it goes.
    FilteredOut(String),
    /// The smart card service went away: every reader and card reported so far is gone.
    ServiceLost,
    /// The service is back; its readers and cards follow as `Added` and `CardPresent`.
    ServiceRestored,
}

impl From<ReaderEvent> for ReaderUpdate {
    fn from(event: ReaderEvent) -> Self {
        match event {
            ReaderEvent::ReaderAdded { reader } => ReaderUpdate::Added(reader),
            ReaderEvent::ReaderRemoved { reader } => ReaderUpdate::Removed(reader),
            ReaderEvent::CardPresent {
                reader,
                atr,
                contactless,
            } => ReaderUpdate::CardPresent {
                reader,
                atr,
                contactless,
            },
            ReaderEvent::CardRemoved { reader } => ReaderUpdate::CardRemoved(reader),
            // The monitor logs the reason; the kiosk only needs to know.
            ReaderEvent::ServiceLost { .. } => ReaderUpdate::ServiceLost,
            ReaderEvent::ServiceRestored => ReaderUpdate::ServiceRestored,
        }
    }
}

/// Readers the kiosk can watch and connect to: [`PcscReaders`] or [`VirtualReaders`].
pub trait ReaderSource: Send + Sync {
    /// Starts delivering updates to `updates` (the readers and cards present first, then
    /// every change) until the returned [`ReaderWatch`] is dropped.
    ///
    /// # Errors
    /// A [`TransportError`] when the readers cannot be watched at all (for PC/SC: the
    /// smart card service cannot be reached, or the watching thread cannot start).
    fn start(&self, updates: UnboundedSender<ReaderUpdate>) -> Result<ReaderWatch, TransportError>;

    /// Opens the card in `reader`: one PC/SC connection, or the virtual card. Dropping the
    /// backend lets go of the card with a reset, so a PIN verified through it does not stay
    /// verified.
    ///
    /// # Errors
    /// [`TransportError::NoCard`] for an empty reader,
    /// [`TransportError::ReaderUnavailable`] for a reader that is not connected, or another
    /// transport error.
    fn connect(&self, reader: &str) -> Result<Box<dyn CardBackend>, TransportError>;
}

/// Watching readers, started by [`ReaderSource::start`]: stops when dropped, after which no
/// update is sent.
pub struct ReaderWatch {
    stop: Option<Box<dyn FnOnce() + Send>>,
}

impl ReaderWatch {
    fn new(stop: impl FnOnce() + Send + 'static) -> Self {
        ReaderWatch {
            stop: Some(Box::new(stop)),
        }
    }

    /// A watch with nothing to stop: the source sends its updates itself (a measurement
    /// playing taps to the runtime).
    #[must_use]
    pub fn idle() -> Self {
        ReaderWatch { stop: None }
    }
}

impl Drop for ReaderWatch {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
    }
}

impl fmt::Debug for ReaderWatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReaderWatch")
            .field("watching", &self.stop.is_some())
            .finish()
    }
}

/// The system's PC/SC readers (through pcscd): a [`ReaderMonitor`] reports them, and one
/// [`PcscContext`], established on first use and re-established after a pcscd restart,
/// connects to their cards.
pub struct PcscReaders {
    filter: MonitorFilter,
    context: Mutex<Option<PcscContext>>,
}

impl PcscReaders {
    /// Readers and cards that pass `filter`. Nothing talks to pcscd until
    /// [`ReaderSource::start`] or [`ReaderSource::connect`].
    #[must_use]
    pub fn new(filter: MonitorFilter) -> Self {
        PcscReaders {
            filter,
            context: Mutex::new(None),
        }
    }
}

impl fmt::Debug for PcscReaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PcscReaders")
            .field("filter", &self.filter)
            .finish_non_exhaustive()
    }
}

impl ReaderSource for PcscReaders {
    /// Starts a [`ReaderMonitor`] and a small thread that forwards its events. Each call
    /// starts a monitor of its own, so several watchers each get every update.
    fn start(&self, updates: UnboundedSender<ReaderUpdate>) -> Result<ReaderWatch, TransportError> {
        let (monitor, events) = ReaderMonitor::start(self.filter.clone())?;
        let forwarder = thread::Builder::new()
            .name("pivtap-reader-updates".to_owned())
            .spawn(move || {
                // Ends when the monitor stops (its sender is dropped) or nobody listens.
                for event in events {
                    if updates.send(ReaderUpdate::from(event)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|error| TransportError::Other {
                reason: format!("cannot start the reader update thread: {error}"),
            })?;
        Ok(ReaderWatch::new(move || {
            monitor.stop();
            if forwarder.join().is_err() {
                tracing::error!("the reader update thread panicked");
            }
        }))
    }

    fn connect(&self, reader: &str) -> Result<Box<dyn CardBackend>, TransportError> {
        let mut slot = lock(&self.context);
        let context = match slot.take() {
            Some(context) => context,
            None => PcscContext::establish()?,
        };
        let context = slot.insert(context);
        Ok(Box::new(PcscCard::connect(context, reader)?))
    }
}

/// Another [`ReaderSource`]'s readers whose name contains a text, in any case (`kiosk.toml`
/// `[readers] name_contains`). Readers left out are reported once as
/// [`ReaderUpdate::FilteredOut`] (and logged, naming the key and the readers seen), so the
/// kiosk can say that a reader is there but not one it was set up for; their cards are
/// never reported.
pub struct FilteredReaders {
    inner: Arc<dyn ReaderSource>,
    name_contains: String,
}

impl FilteredReaders {
    /// `inner`'s readers whose name contains `name_contains` (any case). An empty text keeps
    /// every reader.
    #[must_use]
    pub fn new(inner: Arc<dyn ReaderSource>, name_contains: &str) -> Self {
        FilteredReaders {
            inner,
            name_contains: name_contains.to_owned(),
        }
    }
}

impl fmt::Debug for FilteredReaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FilteredReaders")
            .field("name_contains", &self.name_contains)
            .finish_non_exhaustive()
    }
}

impl ReaderSource for FilteredReaders {
    /// Starts `inner` and a small thread that passes its updates through the filter.
    fn start(&self, updates: UnboundedSender<ReaderUpdate>) -> Result<ReaderWatch, TransportError> {
        let (inner_tx, mut inner_rx) = tokio::sync::mpsc::unbounded_channel();
        let inner_watch = self.inner.start(inner_tx)?;
        let mut filter = ReaderFilter::new(&self.name_contains);
        let forwarder = thread::Builder::new()
            .name("pivtap-reader-filter".to_owned())
            .spawn(move || {
                // Ends when the inner source stops (its sender is dropped) or nobody listens.
                while let Some(update) = inner_rx.blocking_recv() {
                    let Some(update) = filter.pass(update) else {
                        continue;
                    };
                    if let ReaderUpdate::FilteredOut(reader) = &update {
                        tracing::warn!(
                            target: "pivtap::kiosk",
                            reader,
                            name_contains = filter.name_contains,
                            readers_seen = ?filter.ignored,
                            readers_used = ?filter.kept,
                            "a card reader is left out: its name does not contain [readers] name_contains from kiosk.toml"
                        );
                    }
                    if updates.send(update).is_err() {
                        break;
                    }
                }
            })
            .map_err(|error| TransportError::Other {
                reason: format!("cannot start the reader filter thread: {error}"),
            })?;
        Ok(ReaderWatch::new(move || {
            drop(inner_watch);
            if forwarder.join().is_err() {
                tracing::error!("the reader filter thread panicked");
            }
        }))
    }

    fn connect(&self, reader: &str) -> Result<Box<dyn CardBackend>, TransportError> {
        self.inner.connect(reader)
    }
}

/// The pure part of [`FilteredReaders`]: which updates pass, which readers are left out.
#[derive(Debug)]
struct ReaderFilter {
    /// As configured, for the log.
    name_contains: String,
    /// Lower case, for matching.
    lower: String,
    /// Readers connected that pass.
    kept: BTreeSet<String>,
    /// Readers connected that are left out.
    ignored: BTreeSet<String>,
}

impl ReaderFilter {
    fn new(name_contains: &str) -> Self {
        ReaderFilter {
            name_contains: name_contains.to_owned(),
            lower: name_contains.to_lowercase(),
            kept: BTreeSet::new(),
            ignored: BTreeSet::new(),
        }
    }

    fn accepts(&self, reader: &str) -> bool {
        reader.to_lowercase().contains(&self.lower)
    }

    /// The update to pass on for `update`, if any.
    fn pass(&mut self, update: ReaderUpdate) -> Option<ReaderUpdate> {
        match update {
            ReaderUpdate::Added(reader) if self.accepts(&reader) => {
                self.kept.insert(reader.clone());
                Some(ReaderUpdate::Added(reader))
            }
            ReaderUpdate::Added(reader) | ReaderUpdate::FilteredOut(reader) => self
                .ignored
                .insert(reader.clone())
                .then_some(ReaderUpdate::FilteredOut(reader)),
            ReaderUpdate::Removed(reader) => {
                let known = self.kept.remove(&reader) | self.ignored.remove(&reader);
                known.then_some(ReaderUpdate::Removed(reader))
            }
            ReaderUpdate::CardPresent { ref reader, .. }
            | ReaderUpdate::CardRemoved(ref reader) => self.accepts(reader).then_some(update),
            ReaderUpdate::ServiceLost => {
                self.kept.clear();
                self.ignored.clear();
                Some(ReaderUpdate::ServiceLost)
            }
            ReaderUpdate::ServiceRestored => Some(ReaderUpdate::ServiceRestored),
        }
    }
}

/// In-process readers for the demo and tests, driven by hand: [`insert`](Self::insert) and
/// [`remove`](Self::remove) badges, [`unplug`](Self::unplug) and [`plug`](Self::plug) readers.
///
/// Clones share the same readers. Any number of watchers may be started; each first gets
/// the readers and cards present, then every change. Calls naming a reader that does not
/// exist are ignored (and logged), except [`plug`](Self::plug), which connects a new reader.
#[derive(Clone, Default)]
pub struct VirtualReaders {
    bench: Arc<Mutex<Bench>>,
}

/// The readers, their cards and the watchers.
#[derive(Default)]
struct Bench {
    readers: BTreeMap<String, VirtualReader>,
    watchers: BTreeMap<u64, UnboundedSender<ReaderUpdate>>,
    next_watcher: u64,
}

#[derive(Default)]
struct VirtualReader {
    plugged: bool,
    card: Option<SeatedCard>,
}

/// A card in a virtual reader.
struct SeatedCard {
    card: VirtualCardBackend,
    atr: Vec<u8>,
    contactless: bool,
    /// True from the moment the card is powered in a plugged reader until it is removed or
    /// its reader unplugged. Every connection made meanwhile holds this flag, so it fails
    /// once the card is gone even if the same card is inserted again.
    powered: Arc<AtomicBool>,
}

impl SeatedCard {
    fn new(card: VirtualCardBackend) -> Self {
        let options = card.card().options();
        SeatedCard {
            atr: vpcd::atr(options),
            contactless: options.interface == Interface::Contactless,
            card,
            powered: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Powers the card up as a reader does on insertion: a reset, and a new powered
    /// period. Returns the update announcing it.
    fn power_up(&mut self, reader: &str) -> ReaderUpdate {
        self.card.card().reset();
        self.powered = Arc::new(AtomicBool::new(true));
        self.present(reader)
    }

    fn power_down(&self) {
        self.powered.store(false, Ordering::SeqCst);
    }

    fn present(&self, reader: &str) -> ReaderUpdate {
        ReaderUpdate::CardPresent {
            reader: reader.to_owned(),
            atr: self.atr.clone(),
            contactless: self.contactless,
        }
    }
}

impl VirtualReaders {
    /// Plugged-in readers with these names, holding no card.
    #[must_use]
    pub fn new(reader_names: &[&str]) -> Self {
        let readers = reader_names
            .iter()
            .map(|name| {
                let reader = VirtualReader {
                    plugged: true,
                    card: None,
                };
                ((*name).to_owned(), reader)
            })
            .collect();
        VirtualReaders {
            bench: Arc::new(Mutex::new(Bench {
                readers,
                ..Bench::default()
            })),
        }
    }

    /// Puts `card` in `reader` (a tap): the card is reset and `CardPresent` is reported,
    /// contactless when the card's options say so. A card already there is removed first.
    /// In an unplugged reader the card waits, unseen, until the reader is plugged.
    pub fn insert(&self, reader: &str, card: VirtualCardBackend) {
        let mut bench = self.lock();
        let seated = SeatedCard::new(card);
        let Some(slot) = bench.reader_mut(reader) else {
            return;
        };
        let previous = slot.card.replace(seated);
        if let Some(previous) = &previous {
            previous.power_down();
        }
        if !slot.plugged {
            return;
        }
        let present = slot.card.as_mut().map(|card| card.power_up(reader));
        if previous.is_some() {
            bench.announce(ReaderUpdate::CardRemoved(reader.to_owned()));
        }
        if let Some(present) = present {
            bench.announce(present);
        }
    }

    /// Takes the card out of `reader`: `CardRemoved` is reported, and every connection to it
    /// fails from its next command with [`TransportError::CardRemoved`].
    pub fn remove(&self, reader: &str) {
        let mut bench = self.lock();
        let Some(slot) = bench.reader_mut(reader) else {
            return;
        };
        let Some(card) = slot.card.take() else {
            return;
        };
        card.power_down();
        if slot.plugged {
            bench.announce(ReaderUpdate::CardRemoved(reader.to_owned()));
        }
    }

    /// Disconnects `reader`: a card in it is reported removed (and loses power), then the
    /// reader. The card stays in the reader and comes back when it is plugged again.
    pub fn unplug(&self, reader: &str) {
        let mut bench = self.lock();
        let Some(slot) = bench.reader_mut(reader) else {
            return;
        };
        if !slot.plugged {
            return;
        }
        slot.plugged = false;
        let had_card = slot
            .card
            .as_ref()
            .inspect(|card| card.power_down())
            .is_some();
        if had_card {
            bench.announce(ReaderUpdate::CardRemoved(reader.to_owned()));
        }
        bench.announce(ReaderUpdate::Removed(reader.to_owned()));
    }

    /// Connects `reader` (a new reader if no reader has that name): `Added` is reported,
    /// then `CardPresent` for a card waiting in it.
    pub fn plug(&self, reader: &str) {
        let mut bench = self.lock();
        let slot = bench.readers.entry(reader.to_owned()).or_default();
        if slot.plugged {
            return;
        }
        slot.plugged = true;
        let present = slot.card.as_mut().map(|card| card.power_up(reader));
        bench.announce(ReaderUpdate::Added(reader.to_owned()));
        if let Some(present) = present {
            bench.announce(present);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Bench> {
        lock(&self.bench)
    }
}

impl Bench {
    fn reader_mut(&mut self, reader: &str) -> Option<&mut VirtualReader> {
        let slot = self.readers.get_mut(reader);
        if slot.is_none() {
            tracing::warn!(reader, "no virtual reader has this name");
        }
        slot
    }

    /// Sends `update` to every watcher, forgetting those that stopped listening.
    fn announce(&mut self, update: ReaderUpdate) {
        self.watchers
            .retain(|_, watcher| watcher.send(update.clone()).is_ok());
    }

    /// What a new watcher is told first: each plugged reader, then its card.
    fn current(&self) -> Vec<ReaderUpdate> {
        self.readers
            .iter()
            .filter(|(_, slot)| slot.plugged)
            .flat_map(|(name, slot)| {
                let card = slot.card.as_ref().map(|card| card.present(name));
                [Some(ReaderUpdate::Added(name.clone())), card]
            })
            .flatten()
            .collect()
    }
}

impl ReaderSource for VirtualReaders {
    fn start(&self, updates: UnboundedSender<ReaderUpdate>) -> Result<ReaderWatch, TransportError> {
        let mut bench = self.lock();
        for update in bench.current() {
            // A receiver already gone gets nothing more; the watch still stops cleanly.
            let _ = updates.send(update);
        }
        let id = bench.next_watcher;
        bench.next_watcher += 1;
        bench.watchers.insert(id, updates);
        let bench = Arc::clone(&self.bench);
        Ok(ReaderWatch::new(move || {
            lock(&bench).watchers.remove(&id);
        }))
    }

    fn connect(&self, reader: &str) -> Result<Box<dyn CardBackend>, TransportError> {
        let bench = self.lock();
        let unavailable = || TransportError::ReaderUnavailable {
            reader: reader.to_owned(),
        };
        let slot = bench.readers.get(reader).ok_or_else(unavailable)?;
        if !slot.plugged {
            return Err(unavailable());
        }
        let seated = slot.card.as_ref().ok_or(TransportError::NoCard)?;
        Ok(Box::new(VirtualConnection {
            card: seated.card.clone(),
            powered: Arc::clone(&seated.powered),
        }))
    }
}

impl fmt::Debug for VirtualReaders {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bench = self.lock();
        let readers: BTreeMap<&str, (bool, Option<String>)> = bench
            .readers
            .iter()
            .map(|(name, slot)| {
                let card = slot.card.as_ref().map(|seated| seated.card.name());
                (name.as_str(), (slot.plugged, card))
            })
            .collect();
        f.debug_struct("VirtualReaders")
            .field("readers", &readers)
            .finish_non_exhaustive()
    }
}

/// A connection to a card in a virtual reader: it works while the card stays powered.
struct VirtualConnection {
    card: VirtualCardBackend,
    powered: Arc<AtomicBool>,
}

impl VirtualConnection {
    fn check_powered(powered: &AtomicBool) -> Result<(), TransportError> {
        if powered.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(TransportError::CardRemoved)
        }
    }
}

impl CardBackend for VirtualConnection {
    fn transaction(&mut self) -> Result<Box<dyn CardTransaction + '_>, TransportError> {
        Self::check_powered(&self.powered)?;
        let inner = self.card.transaction()?;
        Ok(Box::new(VirtualConnectionTransaction {
            inner,
            powered: &self.powered,
        }))
    }

    fn capabilities(&self) -> LinkCapabilities {
        self.card.capabilities()
    }

    fn name(&self) -> String {
        self.card.name()
    }
}

impl Drop for VirtualConnection {
    /// Like a PC/SC disconnect with a reset: the card forgets a verified PIN.
    fn drop(&mut self) {
        if self.powered.load(Ordering::SeqCst) {
            self.card.card().reset();
        }
    }
}

struct VirtualConnectionTransaction<'a> {
    inner: Box<dyn CardTransaction + 'a>,
    powered: &'a AtomicBool,
}

impl CardTransaction for VirtualConnectionTransaction<'_> {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        VirtualConnection::check_powered(self.powered)?;
        self.inner.transmit(command)
    }
}

/// Locks `mutex`, carrying on after a panic elsewhere (the data stays consistent: every
/// change under these locks is a single assignment or insertion).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
pub(crate) mod tests {
    use pivtap_apdu::LengthMode;
    use pivtap_apdu::piv::commands;
    use pivtap_card::PivSession;
    use pivtap_vcard::image::CardImage;
    use pivtap_vcard::{CardOptions, VirtualCard};
    use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

    use super::*;

    const DESK: &str = "Desk reader";
    const DOOR: &str = "Door reader";

    /// A fixture card, loaded in memory (nothing is ever written back to the fixture).
    pub(crate) fn fixture_card(name: &str) -> VirtualCardBackend {
        let path = format!(
            "{}/../fixtures/cards/{name}.toml",
            env!("CARGO_MANIFEST_DIR")
        );
        let image = CardImage::load(path).unwrap();
        VirtualCardBackend::new(VirtualCard::from_image(&image).unwrap(), name)
    }

    fn drain(updates: &mut UnboundedReceiver<ReaderUpdate>) -> Vec<ReaderUpdate> {
        let mut seen = Vec::new();
        while let Ok(update) = updates.try_recv() {
            seen.push(update);
        }
        seen
    }

    /// The next `count` updates from a watcher fed by a thread, waiting up to 5 s for them,
    /// then a short wait to see that nothing else comes.
    fn next_updates(
        updates: &mut UnboundedReceiver<ReaderUpdate>,
        count: usize,
    ) -> Vec<ReaderUpdate> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut seen = Vec::new();
        while seen.len() < count && std::time::Instant::now() < deadline {
            seen.extend(drain(updates));
            thread::sleep(std::time::Duration::from_millis(5));
        }
        thread::sleep(std::time::Duration::from_millis(50));
        seen.extend(drain(updates));
        seen
    }

    #[test]
    fn a_reader_filter_keeps_matching_readers_in_any_case_and_reports_the_others() {
        let bench = VirtualReaders::new(&[DESK, DOOR]);
        let filtered = FilteredReaders::new(Arc::new(bench.clone()), "DESK");
        let (tx, mut updates) = unbounded_channel();
        let watch = filtered.start(tx).unwrap();
        assert_eq!(
            next_updates(&mut updates, 2),
            [
                ReaderUpdate::Added(DESK.to_owned()),
                ReaderUpdate::FilteredOut(DOOR.to_owned())
            ]
        );
        // A badge on the reader left out is never reported; one on the kept reader is.
        let alice = fixture_card("alice");
        bench.insert(DOOR, alice.clone());
        bench.remove(DOOR);
        bench.insert(DESK, alice.clone());
        assert_eq!(next_updates(&mut updates, 1), [present(DESK, &alice)]);
        // The reader left out going away is reported, so the kiosk forgets it.
        bench.unplug(DOOR);
        assert_eq!(
            next_updates(&mut updates, 1),
            [ReaderUpdate::Removed(DOOR.to_owned())]
        );
        drop(watch);
    }

    #[test]
    fn a_filter_matching_no_reader_reports_every_reader_it_sees() {
        let mut filter = ReaderFilter::new("ACR122");
        assert_eq!(
            filter.pass(ReaderUpdate::Added(DESK.to_owned())),
            Some(ReaderUpdate::FilteredOut(DESK.to_owned()))
        );
        assert_eq!(
            filter.pass(ReaderUpdate::CardRemoved(DESK.to_owned())),
            None
        );
        assert_eq!(
            filter.pass(ReaderUpdate::Added("acs acr122u".to_owned())),
            Some(ReaderUpdate::Added("acs acr122u".to_owned()))
        );
        assert_eq!(
            filter.pass(ReaderUpdate::Removed("never seen".to_owned())),
            None
        );
        assert_eq!(
            filter.pass(ReaderUpdate::ServiceLost),
            Some(ReaderUpdate::ServiceLost)
        );
        assert!(filter.ignored.is_empty() && filter.kept.is_empty());
        // An empty filter keeps everything.
        let mut everything = ReaderFilter::new("");
        assert_eq!(
            everything.pass(ReaderUpdate::Added(DOOR.to_owned())),
            Some(ReaderUpdate::Added(DOOR.to_owned()))
        );
    }

    fn present(reader: &str, card: &VirtualCardBackend) -> ReaderUpdate {
        let options = card.card().options();
        ReaderUpdate::CardPresent {
            reader: reader.to_owned(),
            atr: vpcd::atr(options),
            contactless: options.interface == Interface::Contactless,
        }
    }

    fn removed(reader: &str) -> ReaderUpdate {
        ReaderUpdate::CardRemoved(reader.to_owned())
    }

    #[test]
    fn a_watcher_first_gets_the_readers_and_cards_present() {
        let readers = VirtualReaders::new(&[DESK, DOOR]);
        let alice = fixture_card("alice");
        readers.insert(DOOR, alice.clone());
        let (sender, mut updates) = unbounded_channel();
        let _watch = readers.start(sender).unwrap();
        assert_eq!(
            drain(&mut updates),
            [
                ReaderUpdate::Added(DESK.to_owned()),
                ReaderUpdate::Added(DOOR.to_owned()),
                present(DOOR, &alice),
            ]
        );
    }

    #[test]
    fn taps_removals_and_hot_plug_are_reported_in_order() {
        let readers = VirtualReaders::new(&[DESK]);
        let (sender, mut updates) = unbounded_channel();
        let _watch = readers.start(sender).unwrap();
        assert_eq!(drain(&mut updates), [ReaderUpdate::Added(DESK.to_owned())]);

        let alice = fixture_card("alice");
        let bob = fixture_card("bob");
        readers.insert(DESK, alice.clone());
        readers.remove(DESK);
        readers.remove(DESK);
        assert_eq!(drain(&mut updates), [present(DESK, &alice), removed(DESK)]);

        // A second badge on an occupied reader pushes the first one out.
        readers.insert(DESK, alice.clone());
        readers.insert(DESK, bob.clone());
        assert_eq!(
            drain(&mut updates),
            [present(DESK, &alice), removed(DESK), present(DESK, &bob)]
        );

        readers.unplug(DESK);
        readers.unplug(DESK);
        assert_eq!(
            drain(&mut updates),
            [removed(DESK), ReaderUpdate::Removed(DESK.to_owned())]
        );
        readers.plug(DESK);
        assert_eq!(
            drain(&mut updates),
            [ReaderUpdate::Added(DESK.to_owned()), present(DESK, &bob)]
        );
        readers.plug(DOOR);
        assert_eq!(drain(&mut updates), [ReaderUpdate::Added(DOOR.to_owned())]);
    }

    #[test]
    fn unknown_readers_and_unplugged_ones_report_nothing() {
        let readers = VirtualReaders::new(&[DESK]);
        let (sender, mut updates) = unbounded_channel();
        let _watch = readers.start(sender).unwrap();
        drain(&mut updates);
        readers.insert("Nowhere", fixture_card("alice"));
        readers.remove("Nowhere");
        readers.unplug("Nowhere");
        assert!(drain(&mut updates).is_empty());
        assert_eq!(
            readers.connect("Nowhere").err(),
            Some(TransportError::ReaderUnavailable {
                reader: "Nowhere".to_owned()
            })
        );

        readers.unplug(DESK);
        drain(&mut updates);
        readers.insert(DESK, fixture_card("alice"));
        assert!(drain(&mut updates).is_empty());
        assert!(matches!(
            readers.connect(DESK).err(),
            Some(TransportError::ReaderUnavailable { .. })
        ));
    }

    #[test]
    fn contactless_cards_are_reported_contactless() {
        let readers = VirtualReaders::new(&[DESK]);
        let card = fixture_card("bob");
        card.card().set_options(CardOptions {
            extended_length: false,
            interface: Interface::Contactless,
        });
        readers.insert(DESK, card.clone());
        let (sender, mut updates) = unbounded_channel();
        let _watch = readers.start(sender).unwrap();
        let seen = drain(&mut updates);
        assert!(
            matches!(&seen[1], ReaderUpdate::CardPresent { contactless: true, atr, .. } if *atr == vpcd::atr(card.card().options())),
            "{seen:?}"
        );
        assert!(readers.connect(DESK).unwrap().capabilities().contactless);
    }

    #[test]
    fn every_watcher_gets_every_update_until_its_watch_is_dropped() {
        let readers = VirtualReaders::new(&[DESK]);
        let (first_sender, mut first) = unbounded_channel();
        let (second_sender, mut second) = unbounded_channel();
        let first_watch = readers.start(first_sender).unwrap();
        let _second_watch = readers.start(second_sender).unwrap();
        readers.unplug(DESK);
        let expected = [
            ReaderUpdate::Added(DESK.to_owned()),
            ReaderUpdate::Removed(DESK.to_owned()),
        ];
        assert_eq!(drain(&mut first), expected);
        assert_eq!(drain(&mut second), expected);

        drop(first_watch);
        readers.plug(DESK);
        assert!(drain(&mut first).is_empty());
        assert_eq!(drain(&mut second), [ReaderUpdate::Added(DESK.to_owned())]);
    }

    #[test]
    fn a_connection_fails_with_card_removed_once_its_card_is_removed() {
        let readers = VirtualReaders::new(&[DESK]);
        assert_eq!(readers.connect(DESK).err(), Some(TransportError::NoCard));
        let alice = fixture_card("alice");
        readers.insert(DESK, alice.clone());
        let mut connection = readers.connect(DESK).unwrap();
        assert_eq!(connection.name(), "alice");
        let select = commands::select().to_bytes(LengthMode::Short).unwrap();
        {
            let mut transaction = connection.transaction().unwrap();
            let answer = transaction.transmit(&select).unwrap();
            assert!(answer.ends_with(&[0x90, 0x00]), "{answer:02x?}");
            readers.remove(DESK);
            // Mid-transaction: the very next command fails.
            assert_eq!(
                transaction.transmit(&select),
                Err(TransportError::CardRemoved)
            );
        }
        assert_eq!(
            connection.transaction().err(),
            Some(TransportError::CardRemoved)
        );

        // The same card tapped again: the old connection stays dead, a new one works.
        readers.insert(DESK, alice);
        assert_eq!(
            connection.transaction().err(),
            Some(TransportError::CardRemoved)
        );
        let mut fresh = readers.connect(DESK).unwrap();
        assert!(PivSession::open(fresh.as_mut()).is_ok());
    }

    #[test]
    fn unplugging_the_reader_removes_the_card_from_connections() {
        let readers = VirtualReaders::new(&[DESK]);
        readers.insert(DESK, fixture_card("alice"));
        let mut connection = readers.connect(DESK).unwrap();
        readers.unplug(DESK);
        assert_eq!(
            connection.transaction().err(),
            Some(TransportError::CardRemoved)
        );
        readers.plug(DESK);
        assert_eq!(
            connection.transaction().err(),
            Some(TransportError::CardRemoved)
        );
        assert!(PivSession::open(readers.connect(DESK).unwrap().as_mut()).is_ok());
    }

    #[test]
    fn dropping_a_connection_resets_the_card_so_the_pin_is_forgotten() {
        let readers = VirtualReaders::new(&[DESK]);
        readers.insert(DESK, fixture_card("alice"));
        let pin = pivtap_apdu::piv::Pin::new("123456").unwrap();
        let mut connection = readers.connect(DESK).unwrap();
        {
            let mut session = PivSession::open(connection.as_mut()).unwrap();
            session.verify_pin(&pin).unwrap();
            assert_eq!(session.pin_retries().unwrap(), None, "verified");
        }
        {
            let mut session = PivSession::open(connection.as_mut()).unwrap();
            assert_eq!(session.pin_retries().unwrap(), None, "still verified");
        }
        drop(connection);
        let mut connection = readers.connect(DESK).unwrap();
        let mut session = PivSession::open(connection.as_mut()).unwrap();
        assert_eq!(session.pin_retries().unwrap(), Some(3));
    }

    #[test]
    fn monitor_events_become_updates() {
        let reader = || "ACS ACR122U".to_owned();
        let cases = [
            (
                ReaderEvent::ReaderAdded { reader: reader() },
                ReaderUpdate::Added(reader()),
            ),
            (
                ReaderEvent::ReaderRemoved { reader: reader() },
                ReaderUpdate::Removed(reader()),
            ),
            (
                ReaderEvent::CardPresent {
                    reader: reader(),
                    atr: vec![0x3B, 0x8F],
                    contactless: true,
                },
                ReaderUpdate::CardPresent {
                    reader: reader(),
                    atr: vec![0x3B, 0x8F],
                    contactless: true,
                },
            ),
            (
                ReaderEvent::CardRemoved { reader: reader() },
                ReaderUpdate::CardRemoved(reader()),
            ),
            (
                ReaderEvent::ServiceLost {
                    reason: "gone".to_owned(),
                },
                ReaderUpdate::ServiceLost,
            ),
            (ReaderEvent::ServiceRestored, ReaderUpdate::ServiceRestored),
        ];
        for (event, update) in cases {
            assert_eq!(ReaderUpdate::from(event), update);
        }
    }
}
