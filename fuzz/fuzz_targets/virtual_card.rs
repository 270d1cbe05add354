//! Fuzz target: the virtual card's APDU handler, stateful: one input is a power-up and a sequence of raw command APDUs (empty frame: power cycle), optionally after the harness authenticated the management key and verified the PIN (which fuzzing cannot guess). Afterwards the card's state must still save as an image that loads back unchanged.
#![no_main]
#![forbid(unsafe_code)]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use pivtap_apdu::piv::Pin;
use pivtap_card::{ManagementKey, PivSession};
use pivtap_fuzz::Frames;
use pivtap_vcard::applet::Interface;
use pivtap_vcard::image::CardImage;
use pivtap_vcard::{CardOptions, NewCard, VirtualCard, VirtualCardBackend};

/// The fixture cards, read once: alice (RSA-2048, PIN 123456) and bob (P-256, PIN 24681357).
static FIXTURES: LazyLock<[CardImage; 2]> = LazyLock::new(|| {
    [
        include_str!("../../fixtures/cards/alice.toml"),
        include_str!("../../fixtures/cards/bob.toml"),
    ]
    .map(|text| CardImage::from_toml_str(text).expect("the fixture card loads"))
});

/// GENERATE ASYMMETRIC KEY PAIR (47) for RSA-2048 takes a second or more: such a command
/// would only make the target slow (RSA key generation is not what is being fuzzed).
fn generates_rsa(command: &[u8]) -> bool {
    command.get(1) == Some(&0x47) && command.get(4..).is_some_and(|body| body.contains(&0x07))
}

/// GENERAL AUTHENTICATE (87) with an RSA key (P1 06 or 07): a private-key operation, which
/// under coverage instrumentation costs milliseconds. One per input reaches every RSA path.
fn uses_rsa_key(command: &[u8]) -> bool {
    command.get(1) == Some(&0x87) && matches!(command.get(2), Some(0x06 | 0x07))
}

const RSA_OPERATIONS_PER_INPUT: usize = 1;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, commands)) = data.split_first() else {
        return;
    };
    let options = CardOptions {
        extended_length: flags & 0x08 == 0,
        interface: if flags & 0x04 == 0 {
            Interface::Contact
        } else {
            Interface::Contactless
        },
    };
    // The fixture cards' PINs: alice 123456, bob 24681357; a blank card 123456.
    let pin = if flags & 0x03 == 2 {
        "24681357"
    } else {
        "123456"
    };
    let mut card = match flags & 0x03 {
        fixture @ (1 | 2) => VirtualCard::from_image(&FIXTURES[usize::from(fixture - 1)])
            .expect("the fixture card opens"),
        _ => {
            let mut new = NewCard::factory(options);
            new.serial = 12_345_678;
            VirtualCard::blank(new)
        }
    };
    card.set_options(options);
    let mut backend = VirtualCardBackend::new(card, "fuzz");
    if flags & 0x30 != 0
        && let Ok(mut session) = PivSession::open(&mut backend)
    {
        if flags & 0x10 != 0 {
            let _ = session.authenticate_management_key(&ManagementKey::default_key());
        }
        if flags & 0x20 != 0 {
            let pin = Pin::new(pin).expect("the test PIN is valid");
            let _ = session.verify_pin(&pin);
        }
    }
    {
        let mut card = backend.card();
        let mut rsa_operations = 0;
        for command in Frames::new(commands) {
            if command.is_empty() {
                card.reset();
                continue;
            }
            if generates_rsa(command) {
                continue;
            }
            if uses_rsa_key(command) {
                if rsa_operations == RSA_OPERATIONS_PER_INPUT {
                    continue;
                }
                rsa_operations += 1;
            }
            let response = card.transmit(command);
            assert!(response.len() >= 2, "every answer ends with a status word");
            assert!(
                response.len() <= 65_536 + 2,
                "no answer is longer than an extended Ne"
            );
        }
    }
    let card = backend
        .into_card()
        .unwrap_or_else(|_| unreachable!("one backend"));
    let image = card.to_image().expect("the card's state saves as an image");
    let text = image.to_toml_string().expect("the image writes as TOML");
    let loaded = CardImage::from_toml_str(&text).expect("a written image loads");
    assert_eq!(loaded, image, "the image survives a save and a load");
});
