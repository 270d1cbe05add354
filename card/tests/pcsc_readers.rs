//! PC/SC transport and reader monitor against the system pcscd with the
//! vsmartcard vpcd driver (readers "Virtual PCD 00 00" and "Virtual PCD 00 01").
//!
//! These tests need pcscd: they fail, saying so, when it cannot be reached.
//! They take turns on one lock, since the machine has one pcscd and the vpcd
//! readers are shared.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use pivtap_card::TransportError;
use pivtap_card::pcsc::{PcscCard, PcscContext, ReaderInfo};
use pivtap_card::reader_monitor::{MonitorFilter, ReaderEvent, ReaderMonitor};

const VPCD_READERS: [&str; 2] = ["Virtual PCD 00 00", "Virtual PCD 00 01"];

static PCSCD: Mutex<()> = Mutex::new(());

/// Takes this binary's turn on pcscd.
fn pcscd_turn() -> MutexGuard<'static, ()> {
    PCSCD.lock().unwrap_or_else(PoisonError::into_inner)
}

fn pcscd_unreachable(error: &TransportError) -> ! {
    panic!(
        "pcscd is not reachable: {error}. These tests need the system pcscd with the \
         vsmartcard vpcd driver (Debian packages pcscd and vsmartcard-vpcd)"
    )
}

fn context() -> PcscContext {
    PcscContext::establish().unwrap_or_else(|error| pcscd_unreachable(&error))
}

fn list_readers(context: &PcscContext) -> Vec<ReaderInfo> {
    context
        .list_readers()
        .unwrap_or_else(|error| pcscd_unreachable(&error))
}

fn start_monitor(filter: MonitorFilter) -> (ReaderMonitor, Receiver<ReaderEvent>) {
    ReaderMonitor::start(filter).unwrap_or_else(|error| pcscd_unreachable(&error))
}

/// The events that arrive within `wait`.
fn events_within(events: &Receiver<ReaderEvent>, wait: Duration) -> Vec<ReaderEvent> {
    let deadline = Instant::now() + wait;
    let mut received = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match events.recv_timeout(left) {
            Ok(event) => received.push(event),
            Err(_) => break,
        }
    }
    received
}

fn reader_added(reader: &str) -> ReaderEvent {
    ReaderEvent::ReaderAdded {
        reader: reader.to_owned(),
    }
}

#[test]
fn list_readers_finds_both_vpcd_readers() {
    let _turn = pcscd_turn();
    let readers = list_readers(&context());
    for name in VPCD_READERS {
        let reader = readers
            .iter()
            .find(|reader| reader.name == name)
            .unwrap_or_else(|| panic!("{name:?} is not listed; is vpcd installed? {readers:?}"));
        // A card may be attached by another test; what is reported must agree.
        assert_eq!(reader.card_present, reader.atr.is_some(), "{reader:?}");
        assert!(!reader.contactless || reader.card_present, "{reader:?}");
    }
    assert!(
        readers.iter().all(|reader| !reader.name.contains("PnP")),
        "{readers:?}"
    );
}

#[test]
fn connecting_to_an_empty_reader_says_there_is_no_card() {
    let _turn = pcscd_turn();
    let context = context();
    let readers = list_readers(&context);
    let empty = readers
        .iter()
        .find(|reader| VPCD_READERS.contains(&reader.name.as_str()) && !reader.card_present)
        .unwrap_or_else(|| {
            panic!("both vpcd readers hold a card (is `pivtap vcard attach` running?): {readers:?}")
        });
    assert_eq!(
        PcscCard::connect(&context, &empty.name).err(),
        Some(TransportError::NoCard)
    );
}

#[test]
fn connecting_to_an_unknown_reader_names_it() {
    let _turn = pcscd_turn();
    let context = context();
    for name in ["No Such Reader 00 00", "nul\0in the name"] {
        assert_eq!(
            PcscCard::connect(&context, name).err(),
            Some(TransportError::ReaderUnavailable {
                reader: name.to_owned()
            })
        );
    }
}

#[test]
fn the_monitor_reports_the_readers_present_and_stops_quickly() {
    let _turn = pcscd_turn();
    let (monitor, events) = start_monitor(MonitorFilter::default());
    let received = events_within(&events, Duration::from_millis(500));
    for name in VPCD_READERS {
        let added = received
            .iter()
            .position(|event| *event == reader_added(name))
            .unwrap_or_else(|| panic!("no ReaderAdded for {name:?}: {received:?}"));
        // A card already there comes after its reader.
        let card = received.iter().position(
            |event| matches!(event, ReaderEvent::CardPresent { reader, .. } if reader == name),
        );
        assert!(card.is_none_or(|card| card > added), "{received:?}");
    }
    assert!(
        received.iter().all(|event| matches!(
            event,
            ReaderEvent::ReaderAdded { .. } | ReaderEvent::CardPresent { .. }
        )),
        "{received:?}"
    );

    let stopping = Instant::now();
    monitor.stop();
    assert!(
        stopping.elapsed() < Duration::from_secs(1),
        "stop took {:?}",
        stopping.elapsed()
    );
    // The thread is gone, and with it the sender.
    assert_eq!(
        events.recv_timeout(Duration::from_secs(1)),
        Err(RecvTimeoutError::Disconnected)
    );
}

#[test]
fn the_monitor_filters_readers_by_name() {
    let _turn = pcscd_turn();
    let (monitor, events) = start_monitor(MonitorFilter {
        reader_name_contains: Some("PCD 00 01".to_owned()),
        contactless_only: false,
    });
    let received = events_within(&events, Duration::from_millis(500));
    assert!(
        received.contains(&reader_added("Virtual PCD 00 01")),
        "{received:?}"
    );
    assert!(
        received.iter().all(|event| match event {
            ReaderEvent::ReaderAdded { reader } | ReaderEvent::CardPresent { reader, .. } =>
                reader == "Virtual PCD 00 01",
            _ => false,
        }),
        "{received:?}"
    );
    monitor.stop();

    let (monitor, events) = start_monitor(MonitorFilter {
        reader_name_contains: Some("no reader is called this".to_owned()),
        contactless_only: false,
    });
    assert_eq!(events_within(&events, Duration::from_millis(300)), []);
    monitor.stop();
}

#[test]
fn dropping_the_monitor_stops_it_too() {
    let _turn = pcscd_turn();
    let (monitor, events) = start_monitor(MonitorFilter::default());
    let first = events.recv_timeout(Duration::from_secs(2));
    assert!(
        matches!(first, Ok(ReaderEvent::ReaderAdded { .. })),
        "{first:?}"
    );
    let dropping = Instant::now();
    drop(monitor);
    assert!(dropping.elapsed() < Duration::from_secs(1));
}
