//! The PIV session against cards that differ from pivtap's own: the management-key exchange in each of the spec's forms, a wrong PIN answered with a plain `6300`, a PIN kept across reset.

use std::sync::{Arc, Mutex};

use pivtap_apdu::CommandApdu;
use pivtap_apdu::piv::{Algorithm, KeyReference, Pin, Puk};
use pivtap_card::session::PinStatus;
use pivtap_card::{
    CardBackend, CardTransaction, LinkCapabilities, ManagementKey, PivError, PivSession,
    TransportError,
};
use pivtap_vcard::image::CardImage;
use pivtap_vcard::{CardOptions, NewCard, Quirk, Quirks, VirtualCard, VirtualCardBackend};

/// GENERAL AUTHENTICATE's instruction byte.
const GENERAL_AUTHENTICATE: u8 = 0x87;
/// The management key's reference (P2).
const MANAGEMENT_KEY: u8 = 0x9B;

fn pin(text: &str) -> Pin {
    Pin::new(text).unwrap()
}

fn card_with(quirks: Quirks) -> VirtualCardBackend {
    let mut card = VirtualCard::blank(NewCard::factory(CardOptions::default()));
    card.set_quirks(quirks);
    VirtualCardBackend::new(card, "third-party card")
}

/// What a [`Refusing`] card answers instead of the virtual card, for a command.
type Refusal = fn(&[u8]) -> Option<[u8; 2]>;

/// A virtual card behind a filter that refuses some commands with a status
/// word (a card that does not take that form), and a log of the commands
/// that reached the card or were refused.
struct Refusing {
    card: VirtualCardBackend,
    refuse: Refusal,
    sent: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Refusing {
    fn new(card: VirtualCardBackend, refuse: Refusal) -> Self {
        Refusing {
            card,
            refuse,
            sent: Arc::default(),
        }
    }

    /// The [`shape`] of each management-key GENERAL AUTHENTICATE template sent so far.
    fn management_shapes(&self) -> Vec<String> {
        self.sent
            .lock()
            .unwrap()
            .iter()
            .filter(|command| is_management_authenticate(command))
            .map(|command| shape(&data_of(command)))
            .collect()
    }
}

fn is_management_authenticate(command: &[u8]) -> bool {
    command.len() > 5 && command[1] == GENERAL_AUTHENTICATE && command[3] == MANAGEMENT_KEY
}

/// A command's data field, whether its lengths are short or extended.
fn data_of(command: &[u8]) -> Vec<u8> {
    CommandApdu::from_bytes(command).unwrap().data().to_vec()
}

impl CardBackend for Refusing {
    fn transaction(&mut self) -> Result<Box<dyn CardTransaction + '_>, TransportError> {
        Ok(Box::new(RefusingTransaction {
            inner: self.card.transaction()?,
            refuse: self.refuse,
            sent: Arc::clone(&self.sent),
        }))
    }

    fn capabilities(&self) -> LinkCapabilities {
        self.card.capabilities()
    }

    fn name(&self) -> String {
        self.card.name()
    }
}

struct RefusingTransaction<'a> {
    inner: Box<dyn CardTransaction + 'a>,
    refuse: Refusal,
    sent: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl CardTransaction for RefusingTransaction<'_> {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        self.sent.lock().unwrap().push(command.to_vec());
        match (self.refuse)(command) {
            Some(status) => Ok(status.to_vec()),
            None => self.inner.transmit(command),
        }
    }
}

/// The management key authenticates when the rest of the session can
/// generate a key, which needs it.
fn authenticates(backend: &mut dyn CardBackend) -> Result<(), PivError> {
    let mut session = PivSession::open(backend)?;
    session.authenticate_management_key(&ManagementKey::default_key())?;
    session
        .generate_key(KeyReference::PivAuthentication, Algorithm::EccP256)
        .map(drop)
}

/// A template in hex with its values masked: `7C 0A 80 08 ..` becomes `7C0A8008**`.
fn shape(bytes: &[u8]) -> String {
    let mut out = format!("{:02X}{:02X}", bytes[0], bytes[1]);
    let mut rest = &bytes[2..];
    while let [tag, len, tail @ ..] = rest {
        out.push_str(&format!("{tag:02X}{len:02X}"));
        if *len > 0 {
            out.push_str("**");
        }
        rest = &tail[usize::from(*len)..];
    }
    out
}

fn no_refusal(_: &[u8]) -> Option<[u8; 2]> {
    None
}

#[test]
fn management_key_exchange_speaks_the_form_opensc_and_yubico_piv_tool_speak() {
    // A strict card refuses the empty `82` that pivtap used to add to the second step.
    let mut card = Refusing::new(
        card_with(Quirks::NONE.with(Quirk::StrictTemplate)),
        no_refusal,
    );
    authenticates(&mut card).unwrap();
    assert_eq!(card.management_shapes(), ["7C028000", "7C148008**8108**"]);
}

#[test]
fn a_card_that_needs_the_response_requested_gets_the_other_form_once() {
    // Refuses a second step without `82 00`, as a card reading the spec's example literally.
    fn needs_82(command: &[u8]) -> Option<[u8; 2]> {
        let data = data_of(command);
        let second_step = data[1] > 2;
        (is_management_authenticate(command) && second_step && data[2] == 0x80)
            .then_some([0x6A, 0x80])
    }
    let mut card = Refusing::new(card_with(Quirks::NONE), needs_82);
    authenticates(&mut card).unwrap();
    assert_eq!(
        card.management_shapes(),
        [
            "7C028000",
            "7C148008**8108**",
            "7C028000",
            "7C1682008008**8108**"
        ]
    );
}

#[test]
fn a_card_without_mutual_authentication_gets_the_external_authentication() {
    fn no_witness(command: &[u8]) -> Option<[u8; 2]> {
        (is_management_authenticate(command) && data_of(command) == [0x7C, 0x02, 0x80, 0x00])
            .then_some([0x6A, 0x86])
    }
    let mut card = Refusing::new(card_with(Quirks::NONE), no_witness);
    authenticates(&mut card).unwrap();
    assert_eq!(
        card.management_shapes(),
        ["7C028000", "7C028100", "7C0A8208**"]
    );
}

#[test]
fn refusals_of_every_form_end_in_an_error_without_looping() {
    fn every_second_step(command: &[u8]) -> Option<[u8; 2]> {
        (is_management_authenticate(command) && data_of(command)[1] > 2).then_some([0x6A, 0x80])
    }
    let mut card = Refusing::new(card_with(Quirks::NONE), every_second_step);
    let result = PivSession::open(&mut card)
        .unwrap()
        .authenticate_management_key(&ManagementKey::default_key());
    assert!(
        matches!(
            result,
            Err(PivError::Card {
                status: pivtap_apdu::StatusWord::IncorrectData,
                ..
            })
        ),
        "{result:?}"
    );
    assert_eq!(card.management_shapes().len(), 4);

    fn everything(command: &[u8]) -> Option<[u8; 2]> {
        is_management_authenticate(command).then_some([0x6A, 0x86])
    }
    let mut card = Refusing::new(card_with(Quirks::NONE), everything);
    let result = PivSession::open(&mut card)
        .unwrap()
        .authenticate_management_key(&ManagementKey::default_key());
    assert!(
        matches!(result, Err(PivError::ManagementKeyRejected)),
        "{result:?}"
    );
    assert_eq!(card.management_shapes().len(), 2);
}

#[test]
fn a_wrong_key_is_still_rejected_on_a_strict_card() {
    let mut card = card_with(Quirks::NONE.with(Quirk::StrictTemplate));
    let mut session = PivSession::open(&mut card).unwrap();
    let wrong = ManagementKey::new(Algorithm::TripleDes, &[0x55; 24]).unwrap();
    assert!(matches!(
        session.authenticate_management_key(&wrong),
        Err(PivError::ManagementKeyRejected)
    ));
    let aes = ManagementKey::new(Algorithm::Aes128, &[0x01; 16]).unwrap();
    assert!(matches!(
        session.authenticate_management_key(&aes),
        Err(PivError::ManagementKeyRejected)
    ));
}

#[test]
fn plain_6300_is_a_wrong_pin_or_puk_with_the_tries_unknown() {
    let mut card = card_with(Quirks::NONE.with(Quirk::PlainWrongPinStatus));
    let mut session = PivSession::open(&mut card).unwrap();
    assert!(matches!(
        session.verify_pin(&pin("999999")),
        Err(PivError::WrongPin { retries_left: None })
    ));
    // The try was spent all the same.
    assert_eq!(session.pin_status().unwrap(), PinStatus::RetriesLeft(2));
    assert!(matches!(
        session.change_pin(&pin("999999"), &pin("654321")),
        Err(PivError::WrongPin { retries_left: None })
    ));
    assert_eq!(session.pin_status().unwrap(), PinStatus::RetriesLeft(1));
    let wrong_puk = Puk::new("87654321").unwrap();
    assert!(matches!(
        session.unblock_pin(&wrong_puk, &pin("654321")),
        Err(PivError::WrongPuk { retries_left: None })
    ));
    assert!(matches!(
        session.change_puk(&wrong_puk, &Puk::new("11223344").unwrap()),
        Err(PivError::WrongPuk { retries_left: None })
    ));
    // The right PIN still works, and restores the counter.
    session.verify_pin(&pin("123456")).unwrap();
    session.reset_pin_status().unwrap();
    assert_eq!(session.pin_status().unwrap(), PinStatus::RetriesLeft(3));
}

#[test]
fn a_card_that_keeps_the_pin_across_reset_forgets_it_once_logged_out() {
    let mut card = card_with(Quirks::NONE.with(Quirk::KeepPinOnReset));
    PivSession::open(&mut card)
        .unwrap()
        .verify_pin(&pin("123456"))
        .unwrap();
    card.card().reset();
    let mut session = PivSession::open(&mut card).unwrap();
    assert_eq!(
        session.pin_status().unwrap(),
        PinStatus::Verified,
        "the quirk: a reset leaves the PIN verified"
    );
    assert!(
        session.log_out_pin().unwrap(),
        "the card confirms the log-out"
    );
    drop(session);
    card.card().reset();
    let mut session = PivSession::open(&mut card).unwrap();
    assert_eq!(session.pin_status().unwrap(), PinStatus::RetriesLeft(3));

    // Losing power clears the PIN on every card.
    session.verify_pin(&pin("123456")).unwrap();
    drop(session);
    card.card().power_off();
    let mut session = PivSession::open(&mut card).unwrap();
    assert_eq!(session.pin_status().unwrap(), PinStatus::RetriesLeft(3));
}

#[test]
fn a_card_that_refuses_the_log_out_is_no_error() {
    fn no_log_out(command: &[u8]) -> Option<[u8; 2]> {
        (command[1] == 0x20 && command[2] == 0xFF).then_some([0x6A, 0x86])
    }
    let mut card = Refusing::new(card_with(Quirks::NONE), no_log_out);
    let mut session = PivSession::open(&mut card).unwrap();
    session.verify_pin(&pin("123456")).unwrap();
    assert!(!session.log_out_pin().unwrap());
    assert!(matches!(
        session.reset_pin_status(),
        Err(PivError::Card { .. })
    ));
}

#[test]
fn quirks_are_kept_in_the_card_image() {
    let card = card_with(Quirks::third_party());
    let image = card.card().to_image().unwrap();
    let text = image.to_toml_string().unwrap();
    assert!(
        text.contains(r#"quirks = ["strict-7c", "plain-6300", "keep-pin-on-reset"]"#),
        "{}",
        *text
    );
    let reopened = VirtualCard::from_image(&CardImage::from_toml_str(&text).unwrap()).unwrap();
    assert_eq!(reopened.quirks(), Quirks::third_party());
    let unknown = text.replace("plain-6300", "plain-6301");
    let error = CardImage::from_toml_str(&unknown).unwrap_err();
    assert_eq!(
        error.to_string(),
        "[card] quirks: unknown card quirk `plain-6301`; expected one of strict-7c, plain-6300, keep-pin-on-reset"
    );
}
