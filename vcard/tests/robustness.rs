//! Robustness and front-end tests of the virtual PIV card: random and structured APDU streams, exact ISO 7816-4 front-end answers, persistence and crash safety, and secret-free `Debug`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use p256::ecdsa::signature::Verifier as _;
use pivtap_apdu::command::{CLA_CHAINING, SHORT_MAX_DATA, SHORT_MAX_NE};
use pivtap_apdu::piv::objects::metadata::Metadata;
use pivtap_apdu::piv::objects::public_key::PublicKey;
use pivtap_apdu::piv::{Algorithm, KeyReference, ObjectTag, Pin, Puk, commands};
use pivtap_apdu::{CommandApdu, LengthMode, tlv};
use pivtap_card::{JwsAlgorithm, ManagementKey, PivSession};
use pivtap_testkit::badge::{BOB, FACTORY_MANAGEMENT_KEY_HEX};
use pivtap_vcard::image::CardImage;
use pivtap_vcard::keys::SlotKey;
use pivtap_vcard::{CardOptions, Interface, NewCard, VirtualCard, VirtualCardBackend};
use proptest::prelude::*;

const OK: [u8; 2] = [0x90, 0x00];
const WRONG_LENGTH: [u8; 2] = [0x67, 0x00];
const SECURITY_NOT_SATISFIED: [u8; 2] = [0x69, 0x82];
const BLOCKED: [u8; 2] = [0x69, 0x83];
const NOTHING_PENDING: [u8; 2] = [0x69, 0x85];
const INCORRECT_DATA: [u8; 2] = [0x6A, 0x80];
const NOT_FOUND: [u8; 2] = [0x6A, 0x82];
const NO_SUCH_REFERENCE: [u8; 2] = [0x6A, 0x88];
const NOT_SELECTED: [u8; 2] = [0x6D, 0x00];
const MEMORY_FAILURE: [u8; 2] = [0x65, 0x81];

/// Bob's PIN and PUK, as in fixtures/cards/bob.toml.
const BOB_PIN: &str = BOB.pin;
const BOB_PUK: &str = BOB.puk;
/// The factory management key in hex (also bob's).
const DEFAULT_MANAGEMENT_KEY_HEX: &str = FACTORY_MANAGEMENT_KEY_HEX;

fn bob_image() -> CardImage {
    BOB.image()
}

/// Copies bob's image into `directory` and returns the copy's path.
fn bob_copy(directory: &Path) -> PathBuf {
    let path = directory.join("card.toml");
    fs::copy(BOB.image_path(), &path).unwrap();
    path
}

fn pin(text: &str) -> Pin {
    Pin::new(text).unwrap()
}

fn puk(text: &str) -> Puk {
    Puk::new(text).unwrap()
}

fn short(command: &CommandApdu) -> Vec<u8> {
    command.to_bytes(LengthMode::Short).unwrap().to_vec()
}

fn extended(command: &CommandApdu) -> Vec<u8> {
    command.to_bytes(LengthMode::Extended).unwrap().to_vec()
}

fn status_of(response: &[u8]) -> [u8; 2] {
    match response {
        [.., sw1, sw2] => [*sw1, *sw2],
        _ => panic!("response shorter than a status word: {response:02X?}"),
    }
}

fn with_status(data: &[u8], status: [u8; 2]) -> Vec<u8> {
    [data, &status[..]].concat()
}

/// A factory card on which the management key is authenticated.
fn authenticated_card(options: CardOptions) -> VirtualCard {
    let mut backend =
        VirtualCardBackend::new(VirtualCard::blank(NewCard::factory(options)), "front end");
    PivSession::open(&mut backend)
        .unwrap()
        .authenticate_management_key(&ManagementKey::default_key())
        .unwrap();
    backend
        .into_card()
        .unwrap_or_else(|_| panic!("no other handle on the card"))
}

// ---------------------------------------------------------------------------
// 1. Arbitrary bytes
// ---------------------------------------------------------------------------

/// Instructions the card knows, so random commands reach the applet.
const KNOWN_INS: [u8; 11] = [
    0xA4, 0xCB, 0xDB, 0x20, 0x24, 0x2C, 0x87, 0x47, 0xC0, 0xF7, 0xF8,
];

fn raw_command() -> impl Strategy<Value = Vec<u8>> {
    let header = (
        prop::sample::select(vec![0x00_u8, CLA_CHAINING]),
        prop::sample::select(KNOWN_INS.to_vec()),
        any::<u8>(),
        any::<u8>(),
    );
    prop_oneof![
        // Anything at all.
        prop::collection::vec(any::<u8>(), 0..600),
        // A known header and a random body (mostly malformed lengths).
        (header.clone(), prop::collection::vec(any::<u8>(), 0..600))
            .prop_map(|((cla, ins, p1, p2), body)| [&[cla, ins, p1, p2][..], &body[..]].concat()),
        // A known header and well-formed short lengths around random data.
        (
            header,
            prop::collection::vec(any::<u8>(), 1..=SHORT_MAX_DATA),
            prop::option::of(any::<u8>()),
        )
            .prop_map(|((cla, ins, p1, p2), data, le)| {
                let mut raw = vec![cla, ins, p1, p2, data.len() as u8];
                raw.extend_from_slice(&data);
                raw.extend(le);
                raw
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn arbitrary_bytes_never_break_the_card(
        extended_length in any::<bool>(),
        stream in prop::collection::vec(raw_command(), 1..40),
    ) {
        let mut card = VirtualCard::from_image(&bob_image()).unwrap();
        card.set_options(CardOptions { extended_length, interface: Interface::Contact });
        prop_assert_eq!(status_of(&card.transmit(&short(&commands::select()))), OK);
        for raw in &stream {
            let response = card.transmit(raw);
            prop_assert!(response.len() >= 2, "{:02X?} answered {:02X?}", raw, response);
            prop_assert!(response.len() <= 65_538);
        }
        let image = card.to_image().unwrap();
        let text = image.to_toml_string().unwrap();
        prop_assert_eq!(&CardImage::from_toml_str(&text).unwrap(), &image);
        prop_assert!(image.pin.retries_left <= image.pin.max_retries);
        prop_assert!(image.puk.retries_left <= image.puk.max_retries);
        prop_assert!(VirtualCard::from_image(&image).is_ok());
    }
}

// ---------------------------------------------------------------------------
// 2. Well-formed command streams against a reference model
// ---------------------------------------------------------------------------

/// PINs the stream presents; index 0 is bob's.
const PINS: [&str; 3] = [BOB_PIN, "123456", "99999999"];
/// PUKs the stream presents; index 0 is bob's.
const PUKS: [&str; 3] = [BOB_PUK, "87654321", "ABCDEFGH"];
/// Objects a PIV card releases only after VERIFY (SP 800-73-4 Part 1 Table 3).
const PIN_PROTECTED: [ObjectTag; 4] = [
    ObjectTag::CardholderFingerprints,
    ObjectTag::CardholderFacialImage,
    ObjectTag::PrintedInformation,
    ObjectTag::CardholderIrisImages,
];

/// One thing the host does.
#[derive(Clone, Debug)]
enum Step {
    Select,
    GetData(ObjectTag),
    Verify(usize),
    VerifyStatus,
    VerifyReset,
    ChangePin { current: usize, new: usize },
    ChangePuk { current: usize, new: usize },
    ResetRetryCounter { puk: usize, new_pin: usize },
    PutData(usize),
    GenerateKeyPair(KeyReference),
    Sign(KeyReference),
    GetResponse(usize),
    GetMetadata(KeyReference),
    GetSerial,
    PowerCycle,
}

/// A step and how its command travels.
#[derive(Clone, Debug)]
struct Delivery {
    step: Step,
    extended: bool,
    chunk: Option<usize>,
}

fn object_tag() -> impl Strategy<Value = ObjectTag> {
    prop_oneof![
        prop::sample::select(vec![
            ObjectTag::Chuid,
            ObjectTag::Discovery,
            ObjectTag::PivAuthenticationCertificate,
            ObjectTag::CardCapabilityContainer,
            ObjectTag::KeyHistory,
            ObjectTag::BiometricInformationTemplates,
            ObjectTag::Other(0x5F_FF01),
        ]),
        prop::sample::select(PIN_PROTECTED.to_vec()),
        (1_u8..=20).prop_map(ObjectTag::RetiredCertificate),
    ]
}

fn slot() -> impl Strategy<Value = KeyReference> {
    prop::sample::select(vec![
        KeyReference::PivAuthentication,
        KeyReference::DigitalSignature,
        KeyReference::KeyManagement,
        KeyReference::CardAuthentication,
    ])
}

fn step() -> impl Strategy<Value = Step> {
    let pin = 0..PINS.len();
    let puk = 0..PUKS.len();
    prop_oneof![
        2 => Just(Step::Select),
        2 => object_tag().prop_map(Step::GetData),
        4 => pin.clone().prop_map(Step::Verify),
        2 => Just(Step::VerifyStatus),
        1 => Just(Step::VerifyReset),
        2 => (pin.clone(), pin.clone()).prop_map(|(current, new)| Step::ChangePin { current, new }),
        1 => (puk.clone(), puk.clone()).prop_map(|(current, new)| Step::ChangePuk { current, new }),
        2 => (puk, pin).prop_map(|(puk, new_pin)| Step::ResetRetryCounter { puk, new_pin }),
        1 => (1_usize..400).prop_map(Step::PutData),
        1 => slot().prop_map(Step::GenerateKeyPair),
        2 => slot().prop_map(Step::Sign),
        2 => (1_usize..=SHORT_MAX_NE).prop_map(Step::GetResponse),
        2 => prop::sample::select(vec![
            KeyReference::Pin,
            KeyReference::Puk,
            KeyReference::ManagementKey,
            KeyReference::PivAuthentication,
            KeyReference::DigitalSignature,
        ])
        .prop_map(Step::GetMetadata),
        1 => Just(Step::GetSerial),
        1 => Just(Step::PowerCycle),
    ]
}

fn delivery() -> impl Strategy<Value = Delivery> {
    (step(), any::<bool>(), prop::option::of(1_usize..=40)).prop_map(|(step, extended, chunk)| {
        Delivery {
            step,
            extended,
            chunk,
        }
    })
}

/// The command of a step (`None` for a power cycle, which sends nothing).
fn command_of(step: &Step) -> Option<CommandApdu> {
    Some(match step {
        Step::Select => commands::select(),
        Step::GetData(object) => commands::get_data(*object),
        Step::Verify(index) => commands::verify_pin(KeyReference::Pin, &pin(PINS[*index])),
        Step::VerifyStatus => commands::verify_status(KeyReference::Pin),
        Step::VerifyReset => commands::verify_reset(KeyReference::Pin),
        Step::ChangePin { current, new } => {
            commands::change_pin(&pin(PINS[*current]), &pin(PINS[*new]))
        }
        Step::ChangePuk { current, new } => {
            commands::change_puk(&puk(PUKS[*current]), &puk(PUKS[*new]))
        }
        Step::ResetRetryCounter {
            puk: index,
            new_pin,
        } => commands::reset_retry_counter(&puk(PUKS[*index]), &pin(PINS[*new_pin])),
        Step::PutData(len) => commands::put_data(ObjectTag::KeyHistory, &vec![0x5A; *len]),
        Step::GenerateKeyPair(slot) => commands::generate_key_pair(*slot, Algorithm::EccP256),
        Step::Sign(slot) => commands::sign(Algorithm::EccP256, *slot, &[0x42; 32]),
        Step::GetResponse(ne) => commands::get_response(*ne),
        Step::GetMetadata(reference) => commands::get_metadata(*reference),
        Step::GetSerial => commands::get_serial(),
        Step::PowerCycle => return None,
    })
}

/// Sends `command` in `mode`, as a chain of `chunk`-byte parts when asked
/// (and always when short mode cannot carry the data in one APDU), and
/// returns the answer to the last part. Every earlier part must get `9000`.
fn send(
    card: &mut VirtualCard,
    command: &CommandApdu,
    mode: LengthMode,
    chunk: Option<usize>,
) -> Result<Vec<u8>, TestCaseError> {
    let needs_chaining = mode == LengthMode::Short && command.data().len() > SHORT_MAX_DATA;
    let parts = match chunk.or(needs_chaining.then_some(SHORT_MAX_DATA)) {
        Some(size) => command.chain(size),
        None => vec![command.clone()],
    };
    let Some((last, leading)) = parts.split_last() else {
        return Err(TestCaseError::fail("a chain has at least one part"));
    };
    for part in leading {
        let answer = card.transmit(&part.to_bytes(mode).unwrap());
        prop_assert_eq!(answer, OK.to_vec(), "chained part {:?}", part);
    }
    Ok(card.transmit(&last.to_bytes(mode).unwrap()))
}

/// A PIN or PUK as the model sees it: which pool entry is right, and the tries.
struct Counter {
    right: usize,
    left: u8,
    max: u8,
}

impl Counter {
    /// Presents a candidate: blocked stays blocked, right restores, wrong counts down.
    fn present(&mut self, candidate: usize) -> (bool, [u8; 2]) {
        if self.left == 0 {
            (false, BLOCKED)
        } else if candidate == self.right {
            self.left = self.max;
            (true, OK)
        } else {
            self.left -= 1;
            (false, [0x63, 0xC0 | self.left])
        }
    }

    fn status(&self) -> [u8; 2] {
        if self.left == 0 {
            BLOCKED
        } else {
            [0x63, 0xC0 | self.left]
        }
    }
}

/// What the card must answer.
#[derive(Debug)]
enum Expected {
    /// Exactly these bytes, data and status word.
    Exactly(Vec<u8>),
    /// This status word, with any data.
    Status([u8; 2]),
    /// `9000` with metadata reporting (max, left) retries.
    Retries(u8, u8),
}

/// The reference model: selection, PIN state, counters and pending response bytes.
struct Model {
    selected: bool,
    pin_verified: bool,
    pin: Counter,
    puk: Counter,
    /// GET DATA answers (wrapper included) of the objects on the card.
    objects: BTreeMap<u32, Vec<u8>>,
    pending: Option<Vec<u8>>,
    serial: u32,
}

impl Model {
    fn new(image: &CardImage) -> Self {
        Model {
            selected: false,
            pin_verified: false,
            pin: Counter {
                right: 0,
                left: image.pin.retries_left,
                max: image.pin.max_retries,
            },
            puk: Counter {
                right: 0,
                left: image.puk.retries_left,
                max: image.puk.max_retries,
            },
            objects: image
                .objects
                .iter()
                .map(|object| {
                    (
                        object.tag.tag(),
                        tlv::encode(object.tag.wire_tag(), &object.data),
                    )
                })
                .collect(),
            pending: None,
            serial: image.card.serial,
        }
    }

    fn power_cycle(&mut self) {
        self.selected = false;
        self.pin_verified = false;
        self.pending = None;
    }

    /// Hands out up to `ne` bytes of `data`; the rest waits for GET RESPONSE.
    fn deliver(&mut self, mut data: Vec<u8>, ne: usize) -> Expected {
        let rest = data.split_off(ne.min(data.len()));
        if rest.is_empty() {
            self.pending = None;
            return Expected::Exactly(with_status(&data, OK));
        }
        // 61 00 means 256 or more.
        let more = [0x61, u8::try_from(rest.len()).unwrap_or(0)];
        self.pending = Some(rest);
        Expected::Exactly(with_status(&data, more))
    }

    fn expect(&mut self, step: &Step, extended: bool) -> Expected {
        use Expected::{Exactly, Retries, Status};
        if let Step::GetResponse(ne) = step {
            return match self.pending.take() {
                Some(data) => self.deliver(data, *ne),
                None => Exactly(NOTHING_PENDING.to_vec()),
            };
        }
        self.pending = None;
        match step {
            Step::Select => {
                self.selected = true;
                return Status(OK);
            }
            Step::GetSerial => return Exactly(with_status(&self.serial.to_be_bytes(), OK)),
            Step::GetMetadata(KeyReference::Pin) => return Retries(self.pin.max, self.pin.left),
            Step::GetMetadata(KeyReference::Puk) => return Retries(self.puk.max, self.puk.left),
            Step::GetMetadata(KeyReference::DigitalSignature) => {
                return Exactly(NO_SUCH_REFERENCE.to_vec());
            }
            Step::GetMetadata(_) => return Status(OK),
            _ if !self.selected => return Exactly(NOT_SELECTED.to_vec()),
            _ => {}
        }
        let status = match step {
            Step::GetData(object) => {
                if PIN_PROTECTED.contains(object) && !self.pin_verified {
                    SECURITY_NOT_SATISFIED
                } else if let Some(answer) = self.objects.get(&object.tag()) {
                    let ne = if extended { 65_536 } else { SHORT_MAX_NE };
                    return self.deliver(answer.clone(), ne);
                } else {
                    NOT_FOUND
                }
            }
            Step::Verify(candidate) => {
                let (right, status) = self.pin.present(*candidate);
                self.pin_verified = right;
                status
            }
            Step::VerifyStatus if self.pin_verified => OK,
            Step::VerifyStatus => self.pin.status(),
            Step::VerifyReset => {
                self.pin_verified = false;
                OK
            }
            Step::ChangePin { current, new } => {
                let (right, status) = self.pin.present(*current);
                if right {
                    self.pin.right = *new;
                }
                status
            }
            Step::ChangePuk { current, new } => {
                let (right, status) = self.puk.present(*current);
                if right {
                    self.puk.right = *new;
                }
                status
            }
            Step::ResetRetryCounter { puk, new_pin } => {
                let (right, status) = self.puk.present(*puk);
                if right {
                    self.pin.right = *new_pin;
                    self.pin.left = self.pin.max;
                }
                status
            }
            Step::PutData(_) | Step::GenerateKeyPair(_) => SECURITY_NOT_SATISFIED,
            // Bob's only key is a P-256 key in 9A.
            Step::Sign(KeyReference::PivAuthentication) if self.pin_verified => {
                return Status(OK);
            }
            Step::Sign(KeyReference::PivAuthentication) => SECURITY_NOT_SATISFIED,
            Step::Sign(_) => NO_SUCH_REFERENCE,
            Step::Select
            | Step::GetSerial
            | Step::GetMetadata(_)
            | Step::GetResponse(_)
            | Step::PowerCycle => unreachable!("handled above"),
        };
        Exactly(status.to_vec())
    }
}

fn check(expected: &Expected, answer: &[u8]) -> Result<(), TestCaseError> {
    match expected {
        Expected::Exactly(bytes) => prop_assert_eq!(answer, &bytes[..]),
        Expected::Status(status) => prop_assert_eq!(status_of(answer), *status),
        Expected::Retries(max, left) => {
            prop_assert_eq!(status_of(answer), OK);
            let metadata = Metadata::parse(&answer[..answer.len() - 2]).unwrap();
            prop_assert_eq!(metadata.retries, Some((*max, *left)));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn well_formed_streams_follow_the_reference_model(
        extended_length in any::<bool>(),
        deliveries in prop::collection::vec(delivery(), 1..40),
    ) {
        let image = bob_image();
        let mut card = VirtualCard::from_image(&image).unwrap();
        card.set_options(CardOptions { extended_length, interface: Interface::Contact });
        let mut model = Model::new(&image);
        let opening = Delivery { step: Step::Select, extended: false, chunk: None };
        for delivery in std::iter::once(&opening).chain(&deliveries) {
            let Some(command) = command_of(&delivery.step) else {
                card.reset();
                model.power_cycle();
                continue;
            };
            let extended = extended_length && delivery.extended;
            let mode = if extended { LengthMode::Extended } else { LengthMode::Short };
            let answer = send(&mut card, &command, mode, delivery.chunk)?;
            let expected = model.expect(&delivery.step, extended);
            check(&expected, &answer)
                .map_err(|error| TestCaseError::fail(format!("{delivery:?}: {error}")))?;
        }
        let image = card.to_image().unwrap();
        prop_assert_eq!(image.pin.retries_left, model.pin.left);
        prop_assert_eq!(image.puk.retries_left, model.puk.left);
        prop_assert_eq!(image.pin.value.as_bytes(), PINS[model.pin.right].as_bytes());
        prop_assert_eq!(image.puk.value.as_bytes(), PUKS[model.puk.right].as_bytes());
    }
}

// ---------------------------------------------------------------------------
// 3. The front end, byte for byte
// ---------------------------------------------------------------------------

#[test]
fn get_response_with_nothing_pending_is_refused() {
    let mut card = VirtualCard::blank(NewCard::factory(CardOptions::default()));
    assert_eq!(
        card.transmit(&[0x00, 0xC0, 0x00, 0x00, 0x00]),
        NOTHING_PENDING
    );
    card.transmit(&short(&commands::select()));
    assert_eq!(
        card.transmit(&[0x00, 0xC0, 0x00, 0x00, 0x00]),
        NOTHING_PENDING
    );
}

#[test]
fn an_interrupted_chain_is_dropped_and_the_interruption_answered() {
    let mut card = authenticated_card(CardOptions::default());
    let serial = card.applet().persistent.serial;
    let content = vec![0xAB; 300];
    let put = commands::put_data(ObjectTag::Chuid, &content);
    let parts = put.chain(200);
    assert_eq!(parts.len(), 2);

    assert_eq!(card.transmit(&short(&parts[0])), OK);
    assert_eq!(
        card.transmit(&[0x00, 0xF8, 0x00, 0x00, 0x04]),
        with_status(&serial.to_be_bytes(), OK)
    );
    // Alone, the last part is no PUT DATA body (it starts inside the content).
    assert_eq!(card.transmit(&short(&parts[1])), INCORRECT_DATA);
    let read = extended(&commands::get_data(ObjectTag::Chuid));
    assert_eq!(card.transmit(&read), NOT_FOUND, "nothing was written");

    for part in &parts {
        assert_eq!(card.transmit(&short(part)), OK);
    }
    assert_eq!(
        card.transmit(&read),
        with_status(&tlv::encode(0x53, &content), OK)
    );
}

/// One chained (not last) PUT DATA part of 255 bytes.
fn chained_put_part() -> Vec<u8> {
    let mut raw = vec![CLA_CHAINING, 0xDB, 0x3F, 0xFF, 0xFF];
    raw.extend_from_slice(&[0x55; 255]);
    raw
}

#[test]
fn a_chain_over_64_kib_is_refused() {
    let mut card = authenticated_card(CardOptions::default());
    let part = chained_put_part();
    // 257 parts hold 65535 bytes, within the limit; the 258th crosses it.
    for index in 0..257 {
        assert_eq!(card.transmit(&part), OK, "part {index}");
    }
    assert_eq!(card.transmit(&part), WRONG_LENGTH);
    assert_eq!(
        status_of(&card.transmit(&short(&commands::get_serial()))),
        OK,
        "the card answers normally after refusing the chain"
    );
}

#[test]
fn a_chain_whose_last_part_crosses_64_kib_is_refused() {
    let mut card = authenticated_card(CardOptions::default());
    let part = chained_put_part();
    for index in 0..257 {
        assert_eq!(card.transmit(&part), OK, "part {index}");
    }
    let mut last = part;
    last[0] = 0x00;
    assert_eq!(
        card.transmit(&last),
        WRONG_LENGTH,
        "65535 + 255 bytes is a chain over 64 KiB, last part or not"
    );
}

#[test]
fn a_long_object_comes_back_in_256_byte_pieces() {
    let mut backend = VirtualCardBackend::new(
        VirtualCard::blank(NewCard::factory(CardOptions::default())),
        "front end",
    );
    let content: Vec<u8> = (0..1500_u32).map(|i| (i * 7) as u8).collect();
    {
        let mut session = PivSession::open(&mut backend).unwrap();
        session
            .authenticate_management_key(&ManagementKey::default_key())
            .unwrap();
        session
            .put_object(ObjectTag::PivAuthenticationCertificate, &content)
            .unwrap();
    }
    let mut card = backend.card();
    let first = card.transmit(&short(&commands::get_data(
        ObjectTag::PivAuthenticationCertificate,
    )));
    assert_eq!(first.len(), 256 + 2);
    assert_eq!(status_of(&first), [0x61, 0x00]);
    let mut received = first[..256].to_vec();
    let mut statuses = Vec::new();
    loop {
        let answer = card.transmit(&[0x00, 0xC0, 0x00, 0x00, 0x00]);
        let status = status_of(&answer);
        received.extend_from_slice(&answer[..answer.len() - 2]);
        statuses.push((answer.len() - 2, status));
        if status != [0x61, 0x00] {
            break;
        }
    }
    // 4 + 1500 = 1504 bytes: 256 + 4 × 256 + 224.
    assert_eq!(
        statuses,
        [
            (256, [0x61, 0x00]),
            (256, [0x61, 0x00]),
            (256, [0x61, 0x00]),
            (256, [0x61, 0xE0]),
        ]
    );
    let last = card.transmit(&[0x00, 0xC0, 0x00, 0x00, 0x00]);
    assert_eq!(last.len(), 224 + 2);
    assert_eq!(status_of(&last), OK);
    received.extend_from_slice(&last[..224]);
    assert_eq!(received, tlv::encode(0x53, &content));
    assert_eq!(
        card.transmit(&[0x00, 0xC0, 0x00, 0x00, 0x00]),
        NOTHING_PENDING
    );
}

#[test]
fn a_too_short_le_learns_the_exact_length() {
    let mut card = VirtualCard::blank(NewCard::factory(CardOptions::default()));
    let serial = card.applet().persistent.serial;
    assert_eq!(card.transmit(&[0x00, 0xF8, 0x00, 0x00, 0x02]), [0x6C, 0x04]);
    assert_eq!(
        card.transmit(&[0x00, 0xF8, 0x00, 0x00, 0x04]),
        with_status(&serial.to_be_bytes(), OK)
    );
}

#[test]
fn bad_classes_and_truncated_apdus_get_their_status_words() {
    let mut card = VirtualCard::blank(NewCard::factory(CardOptions::default()));
    let mut select = short(&commands::select());
    select[0] = 0x0C;
    assert_eq!(card.transmit(&select), [0x68, 0x82], "secure messaging");
    select[0] = 0x80;
    assert_eq!(card.transmit(&select), [0x6E, 0x00], "proprietary class");
    assert_eq!(card.transmit(&[0x00, 0xA4, 0x04]), WRONG_LENGTH);
    assert_eq!(card.transmit(&[]), WRONG_LENGTH);
    assert_eq!(
        card.transmit(&[0x00, 0xA4, 0x04, 0x00, 0x05, 0xA0]),
        WRONG_LENGTH
    );
}

#[test]
fn a_short_only_card_refuses_every_extended_apdu_and_takes_the_short_form() {
    let image = bob_image();
    let mut card = VirtualCard::from_image(&image).unwrap();
    card.set_options(CardOptions {
        extended_length: false,
        interface: Interface::Contact,
    });
    let discovery = image
        .objects
        .iter()
        .find(|object| object.tag == ObjectTag::Discovery)
        .unwrap();
    let select = commands::select();
    assert_eq!(card.transmit(&extended(&select)), WRONG_LENGTH);
    assert_eq!(status_of(&card.transmit(&short(&select))), OK);

    // A refused VERIFY must not spend a try.
    let wrong = commands::verify_pin(KeyReference::Pin, &pin("11111111"));
    assert_eq!(card.transmit(&extended(&wrong)), WRONG_LENGTH);
    let status = commands::verify_status(KeyReference::Pin);
    assert_eq!(card.transmit(&short(&status)), [0x63, 0xC3]);

    let cases = [
        (
            commands::get_serial(),
            with_status(&image.card.serial.to_be_bytes(), OK),
        ),
        (
            commands::get_data(ObjectTag::Discovery),
            with_status(&tlv::encode(0x7E, &discovery.data), OK),
        ),
        (
            commands::get_data(ObjectTag::KeyHistory),
            NOT_FOUND.to_vec(),
        ),
        (
            commands::verify_pin(KeyReference::Pin, &pin(BOB_PIN)),
            OK.to_vec(),
        ),
        (
            commands::put_data(ObjectTag::KeyHistory, &[1, 2, 3]),
            SECURITY_NOT_SATISFIED.to_vec(),
        ),
        (
            commands::generate_key_pair(KeyReference::KeyManagement, Algorithm::EccP256),
            SECURITY_NOT_SATISFIED.to_vec(),
        ),
    ];
    for (command, short_answer) in cases {
        assert_eq!(
            card.transmit(&extended(&command)),
            WRONG_LENGTH,
            "{command:?}"
        );
        assert_eq!(card.transmit(&short(&command)), short_answer, "{command:?}");
    }
    let metadata = card.transmit(&short(&commands::get_metadata(KeyReference::Pin)));
    assert_eq!(status_of(&metadata), OK);
}

#[test]
fn reset_forgets_the_pin_and_the_pending_response() {
    let mut card = VirtualCard::from_image(&bob_image()).unwrap();
    let status = short(&commands::verify_status(KeyReference::Pin));
    assert_eq!(status_of(&card.transmit(&short(&commands::select()))), OK);
    assert_eq!(
        card.transmit(&short(&commands::verify_pin(
            KeyReference::Pin,
            &pin(BOB_PIN)
        ))),
        OK
    );
    assert_eq!(card.transmit(&status), OK);
    let certificate = card.transmit(&short(&commands::get_data(
        ObjectTag::PivAuthenticationCertificate,
    )));
    assert_eq!(
        certificate[256], 0x61,
        "the certificate is longer than 256 bytes"
    );

    card.reset();
    assert_eq!(
        card.transmit(&[0x00, 0xC0, 0x00, 0x00, 0x00]),
        NOTHING_PENDING
    );
    assert_eq!(card.transmit(&status), NOT_SELECTED, "reset deselects");
    assert_eq!(status_of(&card.transmit(&short(&commands::select()))), OK);
    assert_eq!(card.transmit(&status), [0x63, 0xC3]);
}

// ---------------------------------------------------------------------------
// 4. Persistence and crash safety
// ---------------------------------------------------------------------------

fn wrong_verify() -> Vec<u8> {
    short(&commands::verify_pin(KeyReference::Pin, &pin("11111111")))
}

#[test]
fn every_pin_try_is_in_the_file_before_the_answer() {
    let directory = tempfile::tempdir().unwrap();
    let path = bob_copy(directory.path());
    let mut card = VirtualCard::open(&path).unwrap();
    assert_eq!(status_of(&card.transmit(&short(&commands::select()))), OK);

    assert_eq!(card.transmit(&wrong_verify()), [0x63, 0xC2]);
    let on_disk = CardImage::load(&path).unwrap();
    assert_eq!(on_disk.pin.retries_left, on_disk.pin.max_retries - 1);

    let right = short(&commands::verify_pin(KeyReference::Pin, &pin(BOB_PIN)));
    assert_eq!(card.transmit(&right), OK);
    let on_disk = CardImage::load(&path).unwrap();
    assert_eq!(on_disk.pin.retries_left, on_disk.pin.max_retries);
    assert_eq!(on_disk, bob_image(), "nothing else changed");
}

#[cfg(unix)]
#[test]
fn a_failed_save_answers_memory_failure_and_keeps_the_old_file() {
    use std::os::unix::fs::PermissionsExt as _;

    let root = tempfile::tempdir().unwrap();
    let cards = root.path().join("cards");
    fs::create_dir(&cards).unwrap();
    let path = bob_copy(&cards);
    let original = fs::read(&path).unwrap();
    let mut card = VirtualCard::open(&path).unwrap();
    assert_eq!(status_of(&card.transmit(&short(&commands::select()))), OK);

    // Saving to a path under a regular file fails, and leaves the card's file alone.
    let not_a_directory = root.path().join("not-a-dir");
    fs::write(&not_a_directory, b"a file").unwrap();
    assert!(card.save_as(not_a_directory.join("card.toml")).is_err());
    assert_eq!(card.storage(), Some(path.as_path()));

    fs::set_permissions(&cards, fs::Permissions::from_mode(0o555)).unwrap();
    let permissions_bind = fs::write(cards.join("probe"), b"").is_err();
    // Root ignores permission bits: move the directory away and put a file in its place.
    let kept = if permissions_bind {
        path.clone()
    } else {
        fs::remove_file(cards.join("probe")).unwrap();
        fs::set_permissions(&cards, fs::Permissions::from_mode(0o755)).unwrap();
        let moved = root.path().join("cards-moved");
        fs::rename(&cards, &moved).unwrap();
        fs::write(&cards, b"not a directory").unwrap();
        moved.join("card.toml")
    };

    assert_eq!(card.transmit(&wrong_verify()), MEMORY_FAILURE);
    assert_eq!(fs::read(&kept).unwrap(), original, "the old file is intact");
    let leftovers: Vec<_> = fs::read_dir(kept.parent().unwrap())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["card.toml"], "no temporary file is left behind");

    // Once saving works again, the try that was not saved still counts.
    if permissions_bind {
        fs::set_permissions(&cards, fs::Permissions::from_mode(0o755)).unwrap();
    } else {
        fs::remove_file(&cards).unwrap();
        fs::rename(kept.parent().unwrap(), &cards).unwrap();
    }
    assert_eq!(card.transmit(&wrong_verify()), [0x63, 0xC1]);
    assert_eq!(CardImage::load(&path).unwrap().pin.retries_left, 1);
}

#[test]
fn a_generated_key_is_saved_and_signs_after_reopening() {
    let directory = tempfile::tempdir().unwrap();
    let path = bob_copy(directory.path());
    let slot = KeyReference::KeyManagement;
    let public_key = {
        let mut backend = VirtualCardBackend::new(VirtualCard::open(&path).unwrap(), "bob");
        let mut session = PivSession::open(&mut backend).unwrap();
        session
            .authenticate_management_key(&ManagementKey::default_key())
            .unwrap();
        session.generate_key(slot, Algorithm::EccP256).unwrap()
    };
    let on_disk = CardImage::load(&path).unwrap();
    let entry = on_disk
        .keys
        .iter()
        .find(|entry| entry.slot() == slot)
        .expect("the new key is in the file");
    assert_eq!(entry.algorithm(), Algorithm::EccP256);

    let mut backend = VirtualCardBackend::new(VirtualCard::open(&path).unwrap(), "bob again");
    let mut session = PivSession::open(&mut backend).unwrap();
    session.verify_pin(&pin(BOB_PIN)).unwrap();
    let message = b"header.payload signed after a restart";
    let signature = session
        .sign(slot, Algorithm::EccP256, JwsAlgorithm::Es256, message)
        .unwrap();
    let PublicKey::Ec {
        curve: Algorithm::EccP256,
        point,
    } = public_key
    else {
        panic!("a P-256 public key expected, got {public_key:?}");
    };
    let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).unwrap();
    let signature = p256::ecdsa::Signature::from_slice(&signature).unwrap();
    key.verify(message, &signature)
        .expect("the reopened card signs with the generated key");
}

// ---------------------------------------------------------------------------
// 5. Debug output holds no secret
// ---------------------------------------------------------------------------

/// Text that must never appear in `Debug` or error output, in every form a
/// careless `Debug` could print it.
fn secret_forms(secrets: &[&[u8]]) -> Vec<String> {
    let mut forms = vec!["PRIVATE KEY".to_owned()];
    for secret in secrets {
        if let Ok(text) = std::str::from_utf8(secret) {
            forms.push(text.to_owned());
        }
        forms.push(hex::encode(secret));
        forms.push(hex::encode_upper(secret));
        forms.push(format!("{secret:?}").trim_matches(['[', ']']).to_owned());
    }
    forms
}

fn assert_no_secret(shown: &str, forbidden: &[String]) {
    for secret in forbidden {
        assert!(
            !shown.contains(secret.as_str()),
            "{secret:?} appears in {shown}"
        );
    }
}

#[test]
fn debug_output_never_shows_a_secret() {
    let image = bob_image();
    let bob_pem = image.keys[0].private_key_pem().to_owned();
    let generated = SlotKey::generate(Algorithm::EccP256).unwrap();
    let generated_pem = generated.to_pkcs8_pem().unwrap().to_string();
    let management_key = ManagementKey::default_key();
    let aes_key = ManagementKey::new(Algorithm::Aes256, &[0xA5; 32]).unwrap();

    let mut secrets: Vec<Vec<u8>> = vec![
        BOB_PIN.as_bytes().to_vec(),
        BOB_PUK.as_bytes().to_vec(),
        hex::decode(DEFAULT_MANAGEMENT_KEY_HEX).unwrap(),
        vec![0xA5; 32],
    ];
    for pem in [&bob_pem, &generated_pem] {
        let body: String = pem
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .collect();
        secrets.extend(
            pem.lines()
                .filter(|line| !line.starts_with("-----"))
                .map(|line| line.as_bytes().to_vec()),
        );
        secrets.push(
            base64::engine::general_purpose::STANDARD
                .decode(body)
                .unwrap(),
        );
    }
    let secret_refs: Vec<&[u8]> = secrets.iter().map(Vec::as_slice).collect();
    let forbidden = secret_forms(&secret_refs);

    let bob_text = fs::read_to_string(BOB.image_path()).unwrap();
    let broken_images = [
        bob_text.replace("value = \"24681357\"", "value = 24681357"),
        bob_text.replace("value = \"24681357\"", "value = 2468.1357"),
        bob_text.replace("value = \"24681357\"", "value = \"24681357"),
        bob_text.replace("value = \"24681357\"", "value = \"2468135x\""),
        bob_text.replace(
            "value = \"24681357\"",
            "value = \"24681357\"\nvalue = \"24681357\"",
        ),
        bob_text.replace(
            DEFAULT_MANAGEMENT_KEY_HEX,
            "0102030405060708010203040506070801020304050607",
        ),
        bob_text.replace("MIGHAgEAMBMGByqGSM49", "MIGHAgEAMBMGByqGSM4!"),
    ];
    let directory = tempfile::tempdir().unwrap();
    let mut shown = vec![
        format!("{image:?}"),
        format!("{:?}", image.pin),
        format!("{:?}", image.puk),
        format!("{:?}", image.keys),
        format!("{:?}", image.keys[0].slot_key().unwrap()),
        format!("{generated:?}"),
        format!("{management_key:?}"),
        format!("{aes_key:?}"),
        format!("{:?}", pin(BOB_PIN)),
        format!("{:?}", puk(BOB_PUK)),
        format!(
            "{:?}",
            commands::verify_pin(KeyReference::Pin, &pin(BOB_PIN))
        ),
        format!("{:?}", commands::change_pin(&pin(BOB_PIN), &pin(BOB_PIN))),
        format!(
            "{:?}",
            commands::reset_retry_counter(&puk(BOB_PUK), &pin(BOB_PIN))
        ),
        format!("{:?}", VirtualCard::from_image(&image).unwrap().options()),
    ];
    for (index, text) in broken_images.iter().enumerate() {
        let error = CardImage::from_toml_str(text).expect_err("a broken image is refused");
        shown.push(format!("{error:?}"));
        shown.push(error.to_string());
        let path = directory.path().join(format!("broken-{index}.toml"));
        fs::write(&path, text).unwrap();
        let error = VirtualCard::open(&path)
            .err()
            .expect("a broken image does not open");
        shown.push(format!("{error:?}"));
        shown.push(error.to_string());
    }
    for text in &shown {
        assert_no_secret(text, &forbidden);
    }
    assert!(shown[0].contains("REDACTED"), "{}", shown[0]);
}
