//! PC/SC transport and reader monitor against the system pcscd with the vsmartcard vpcd driver (readers "Virtual PCD 00 00" and "Virtual PCD 00 01").
//!
//! These tests need pcscd: they fail, saying so, when it cannot be reached.
//! They take turns on one lock, since the machine has one pcscd and the vpcd
//! readers are shared.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use pivtap_card::TransportError;
use pivtap_card::pcsc::PcscCard;
use pivtap_card::reader_monitor::{MonitorFilter, ReaderEvent, ReaderMonitor};
use pivtap_testkit::pcscd::{
    self, InReader, PcscdTurn, VPCD_READER_0, VPCD_READER_1, context, list_readers,
    pcscd_unreachable, start_pcscd, stop_pcscd,
};

/// The names of the vpcd readers.
const VPCD_READERS: [&str; 2] = [VPCD_READER_0.name, VPCD_READER_1.name];

/// This test's turn on pcscd, once both vpcd readers are empty.
fn pcscd_turn() -> PcscdTurn {
    pcscd::pcscd_turn(&pcscd::VPCD_READERS)
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

fn blank_card(options: pivtap_vcard::CardOptions) -> pivtap_vcard::VirtualCardBackend {
    use pivtap_vcard::{NewCard, VirtualCard, VirtualCardBackend};
    VirtualCardBackend::new(
        VirtualCard::blank(NewCard::factory(options)),
        "event test card",
    )
}

/// A monitor's events as a test claims them: an event that arrives while the
/// test waits for another is kept for a later claim, since pcscd polls its
/// readers independently and may report two readers' cards in either order.
struct Events {
    receiver: Receiver<ReaderEvent>,
    unclaimed: VecDeque<ReaderEvent>,
}

impl Events {
    fn new(receiver: Receiver<ReaderEvent>) -> Self {
        Events {
            receiver,
            unclaimed: VecDeque::new(),
        }
    }

    /// Claims the first event about `reader` that `wanted` accepts; fails
    /// after 5 s, saying what pcscd itself lists.
    fn wait_for(
        &mut self,
        reader: &str,
        what: &str,
        wanted: impl Fn(&ReaderEvent) -> bool,
    ) -> ReaderEvent {
        if let Some(index) = self.unclaimed.iter().position(&wanted) {
            return self.unclaimed.remove(index).expect("index from position");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.receiver.recv_timeout(left) {
                Ok(event) if wanted(&event) => return event,
                Ok(event) => self.unclaimed.push_back(event),
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("the monitor stopped; unclaimed {:?}", self.unclaimed)
                }
            }
        }
        // Say whether pcscd itself saw the change, to tell a missed event
        // from a card pcscd never noticed.
        let pcscd_view = list_readers(&context());
        panic!(
            "no {what} for {reader:?} within 5 s; unclaimed {:?}; pcscd lists {pcscd_view:?}",
            self.unclaimed
        );
    }
}

fn card_present_in(reader: &'static str) -> impl Fn(&ReaderEvent) -> bool {
    move |event| matches!(event, ReaderEvent::CardPresent { reader: r, .. } if r == reader)
}

fn card_removed_from(reader: &'static str) -> impl Fn(&ReaderEvent) -> bool {
    move |event| matches!(event, ReaderEvent::CardRemoved { reader: r } if r == reader)
}

#[test]
fn attach_detach_and_reattach_are_reported_with_the_interface() {
    use pivtap_vcard::{CardOptions, Interface};
    let _turn = pcscd_turn();
    let reader = VPCD_READERS[1];
    let (monitor, receiver) = start_monitor(MonitorFilter {
        reader_name_contains: Some(reader.to_owned()),
        contactless_only: false,
    });
    let mut events = Events::new(receiver);
    let contact = CardOptions::default();
    let mut attached = InReader::attach(&blank_card(contact), VPCD_READER_1);
    match events.wait_for(reader, "card", card_present_in(reader)) {
        ReaderEvent::CardPresent {
            atr, contactless, ..
        } => {
            assert_eq!(atr, pivtap_vcard::vpcd::atr(contact));
            assert!(!contactless);
        }
        other => unreachable!("{other:?}"),
    }
    let backend = attached.take_out();
    events.wait_for(reader, "removal", card_removed_from(reader));

    // The same card again, now held to the reader as a contactless badge.
    backend.card().present_as(CardOptions {
        interface: Interface::Contactless,
        extended_length: false,
    });
    let attached = InReader::attach(&backend, VPCD_READER_1);
    match events.wait_for(reader, "card", card_present_in(reader)) {
        ReaderEvent::CardPresent {
            contactless, atr, ..
        } => {
            assert!(contactless, "ATR {atr:02X?}");
        }
        other => unreachable!("{other:?}"),
    }
    drop(attached);
    events.wait_for(reader, "removal", card_removed_from(reader));
    monitor.stop();
}

#[test]
fn a_card_pulled_between_verify_and_signature_fails_cleanly_and_keeps_its_state() {
    use pivtap_apdu::piv::{Algorithm, KeyReference, Pin};
    use pivtap_card::{JwsAlgorithm, ManagementKey, PivError, PivSession};
    use pivtap_vcard::CardOptions;
    let _turn = pcscd_turn();
    let reader = VPCD_READERS[1];
    let backend = blank_card(CardOptions::default());
    {
        let mut provisioning = backend.clone();
        let mut session = PivSession::open(&mut provisioning).unwrap();
        session
            .authenticate_management_key(&ManagementKey::default_key())
            .unwrap();
        session
            .generate_key(KeyReference::PivAuthentication, Algorithm::EccP256)
            .unwrap();
    }
    let (monitor, receiver) = start_monitor(MonitorFilter {
        reader_name_contains: Some(reader.to_owned()),
        contactless_only: false,
    });
    let mut events = Events::new(receiver);
    let mut attached = InReader::attach(&backend, VPCD_READER_1);
    events.wait_for(reader, "card", card_present_in(reader));
    let context = context();
    let mut card = PcscCard::connect(&context, reader).unwrap();
    let pin = Pin::new("123456").unwrap();
    let failure = {
        let mut session = PivSession::open(&mut card).unwrap();
        session.verify_pin(&pin).unwrap();
        // The badge leaves the field before the signature.
        let backend = attached.take_out();
        let started = Instant::now();
        let result = session.sign(
            KeyReference::PivAuthentication,
            Algorithm::EccP256,
            JwsAlgorithm::Es256,
            b"m",
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no hang: {:?}",
            started.elapsed()
        );
        (result, backend)
    };
    let (result, backend) = failure;
    match result {
        Err(PivError::Transport(
            TransportError::CardRemoved | TransportError::NoCard | TransportError::CardReset,
        )) => {}
        other => panic!("a pulled card must give a clear transport error, got {other:?}"),
    }
    drop(card);
    events.wait_for(reader, "removal", card_removed_from(reader));
    // The card kept its state: counters untouched, key still there; the next
    // tap starts over and needs the PIN again.
    assert_eq!(backend.card().applet().persistent.pin.retries_left, 3);
    let attached = InReader::attach(&backend, VPCD_READER_1);
    events.wait_for(reader, "card", card_present_in(reader));
    let mut card = PcscCard::connect(&context, reader).unwrap();
    let mut session = PivSession::open(&mut card).unwrap();
    assert!(matches!(
        session.sign(
            KeyReference::PivAuthentication,
            Algorithm::EccP256,
            JwsAlgorithm::Es256,
            b"m"
        ),
        Err(PivError::AccessDenied { .. })
    ));
    session.verify_pin(&pin).unwrap();
    session
        .sign(
            KeyReference::PivAuthentication,
            Algorithm::EccP256,
            JwsAlgorithm::Es256,
            b"m",
        )
        .unwrap();
    drop(session);
    drop(card);
    drop(attached);
    monitor.stop();
}

#[test]
fn two_readers_hold_two_cards_at_once() {
    use pivtap_apdu::piv::Pin;
    use pivtap_card::PivSession;
    use pivtap_vcard::{CardOptions, NewCard, VirtualCard, VirtualCardBackend};
    let _turn = pcscd_turn();
    let (monitor, receiver) = start_monitor(MonitorFilter::default());
    let mut events = Events::new(receiver);
    let cards: Vec<VirtualCardBackend> = (0..2)
        .map(|index| {
            let mut new = NewCard::factory(CardOptions::default());
            new.serial = 20_000_000 + index;
            VirtualCardBackend::new(VirtualCard::blank(new), "two readers")
        })
        .collect();
    let first = InReader::attach(&cards[0], VPCD_READER_0);
    let second = InReader::attach(&cards[1], VPCD_READER_1);
    events.wait_for(VPCD_READERS[0], "card", card_present_in(VPCD_READERS[0]));
    events.wait_for(VPCD_READERS[1], "card", card_present_in(VPCD_READERS[1]));
    let context = context();
    let listed = list_readers(&context);
    for name in VPCD_READERS {
        assert!(
            listed.iter().any(|r| r.name == name && r.card_present),
            "{listed:?}"
        );
    }
    // Each reader reaches its own card: a wrong PIN counts down only there.
    for (index, reader) in VPCD_READERS.into_iter().enumerate() {
        let mut card = PcscCard::connect(&context, reader).unwrap();
        let mut session = PivSession::open(&mut card).unwrap();
        assert_eq!(session.serial().unwrap(), Some(20_000_000 + index as u32));
        if index == 1 {
            assert!(session.verify_pin(&Pin::new("999999").unwrap()).is_err());
        }
    }
    assert_eq!(cards[0].card().applet().persistent.pin.retries_left, 3);
    assert_eq!(cards[1].card().applet().persistent.pin.retries_left, 2);
    drop(first);
    drop(second);
    events.wait_for(
        VPCD_READERS[0],
        "removal",
        card_removed_from(VPCD_READERS[0]),
    );
    events.wait_for(
        VPCD_READERS[1],
        "removal",
        card_removed_from(VPCD_READERS[1]),
    );
    monitor.stop();
}

/// pcscd restarts under a running program: calls fail with a clear error
/// while it is gone, the same context works again once it is back, and the
/// monitor reports the loss and the recovery. It restarts the system pcscd,
/// so it needs root and runs only when asked for by name: `scripts/test`
/// runs it with `--ignored`.
#[test]
#[ignore = "restarts the system pcscd (needs root); scripts/test runs it explicitly"]
fn a_pcscd_restart_is_survived_without_restarting_the_program() {
    let _turn = pcscd_turn();
    let context = context();
    assert!(!list_readers(&context).is_empty());
    let (monitor, events) = start_monitor(MonitorFilter::default());
    events_within(&events, Duration::from_millis(300));

    stop_pcscd();
    match context.list_readers() {
        Err(TransportError::ServiceUnavailable { .. }) => {}
        other => {
            start_pcscd();
            panic!(
                "with pcscd stopped, listing readers must say the service is unavailable: {other:?}"
            );
        }
    }
    let lost = events_within(&events, Duration::from_secs(3));
    start_pcscd();
    assert!(
        lost.iter()
            .any(|e| matches!(e, ReaderEvent::ServiceLost { .. })),
        "the monitor did not report the loss: {lost:?}"
    );

    // The same context works again: it re-creates its PC/SC context itself.
    let deadline = Instant::now() + Duration::from_secs(15);
    let readers = loop {
        match context.list_readers() {
            Ok(readers)
                if VPCD_READERS
                    .iter()
                    .all(|name| readers.iter().any(|r| r.name == *name)) =>
            {
                break readers;
            }
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            other => panic!("pcscd is back but the context does not recover: {other:?}"),
        }
    };
    assert!(readers.iter().all(|r| !r.name.contains("PnP")));
    let restored = events_within(&events, Duration::from_secs(5));
    assert!(
        restored
            .iter()
            .any(|e| matches!(e, ReaderEvent::ServiceRestored)),
        "the monitor did not report the recovery: {restored:?}"
    );
    monitor.stop();
}
