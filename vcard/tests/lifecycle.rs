//! The virtual card's life cycle over raw APDUs: RESET (YubiKey `FB`) back to factory state, and a blank card as it ships.

use pivtap_apdu::piv::objects::chuid::Chuid;
use pivtap_apdu::piv::{Algorithm, KeyReference, ObjectTag, Pin, Puk, commands};
use pivtap_apdu::{CommandApdu, LengthMode, ResponseApdu, StatusWord};
use pivtap_card::{ManagementKey, PivSession};
use pivtap_vcard::image::CardImage;
use pivtap_vcard::{CardOptions, Interface, NewCard, VirtualCard, VirtualCardBackend};

fn send(card: &mut VirtualCard, command: &CommandApdu) -> ResponseApdu {
    let raw = command.to_bytes(LengthMode::Extended).unwrap();
    ResponseApdu::from_bytes(&card.transmit(&raw)).unwrap()
}

fn status(card: &mut VirtualCard, command: &CommandApdu) -> StatusWord {
    send(card, command).status()
}

fn pin(text: &str) -> Pin {
    Pin::new(text).unwrap()
}

fn puk(text: &str) -> Puk {
    Puk::new(text).unwrap()
}

/// A factory card with a non-default PIN, PUK and management key, a 9A key and a CHUID.
fn personalised_card() -> VirtualCard {
    let mut new = NewCard::factory(CardOptions::default());
    new.pin = pin("918273");
    new.puk = puk("56473829");
    new.management_key = ManagementKey::new(Algorithm::Aes192, &[0x42; 24]).unwrap();
    let management_key = new.management_key.clone();
    let mut backend = VirtualCardBackend::new(VirtualCard::blank(new), "lifecycle");
    {
        let mut session = PivSession::open(&mut backend).unwrap();
        session
            .authenticate_management_key(&management_key)
            .unwrap();
        session
            .generate_key(KeyReference::PivAuthentication, Algorithm::EccP256)
            .unwrap();
        let chuid = Chuid {
            guid: [7; 16],
            ..Chuid::default()
        };
        session
            .put_object(ObjectTag::Chuid, &chuid.encode())
            .unwrap();
    }
    let Ok(mut card) = backend.into_card() else {
        panic!("the backend is not shared");
    };
    card.reset();
    card
}

/// Spends every PIN try, or every PUK try, with wrong values.
fn block(card: &mut VirtualCard, reference: KeyReference) {
    for _ in 0..20 {
        let answer = match reference {
            KeyReference::Pin => status(
                card,
                &commands::verify_pin(KeyReference::Pin, &pin("00000000")),
            ),
            _ => status(
                card,
                &commands::change_puk(&puk("00000000"), &puk("11111111")),
            ),
        };
        if answer == StatusWord::AuthenticationBlocked {
            return;
        }
        assert!(matches!(answer, StatusWord::RetriesLeft(_)), "{answer:?}");
    }
    panic!("{reference} never blocked");
}

#[test]
fn reset_needs_both_pin_and_puk_blocked() {
    let mut card = personalised_card();
    assert_eq!(status(&mut card, &commands::select()), StatusWord::Success);
    let reset = commands::reset_application();
    assert_eq!(
        status(&mut card, &reset),
        StatusWord::ConditionsNotSatisfied
    );
    block(&mut card, KeyReference::Pin);
    assert_eq!(
        status(&mut card, &reset),
        StatusWord::ConditionsNotSatisfied
    );
    // The 9A key and the CHUID are still there after the refusals.
    assert!(
        card.applet()
            .persistent
            .keys
            .contains_key(&KeyReference::PivAuthentication)
    );
    assert_eq!(
        status(&mut card, &commands::get_data(ObjectTag::Chuid)),
        StatusWord::Success
    );

    let mut card = personalised_card();
    assert_eq!(status(&mut card, &commands::select()), StatusWord::Success);
    block(&mut card, KeyReference::Puk);
    assert_eq!(
        status(&mut card, &reset),
        StatusWord::ConditionsNotSatisfied
    );
    block(&mut card, KeyReference::Pin);
    let wrong_parameters = CommandApdu::new(0x00, 0xFB, 0x01, 0x00);
    assert_eq!(
        status(&mut card, &wrong_parameters),
        StatusWord::IncorrectP1P2
    );
    assert_eq!(status(&mut card, &reset), StatusWord::Success);
}

#[test]
fn reset_restores_factory_state_and_saves_it() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("card.toml");
    let mut card = personalised_card();
    let serial = card.applet().persistent.serial;
    card.save_as(&path).unwrap();
    assert_eq!(status(&mut card, &commands::select()), StatusWord::Success);
    block(&mut card, KeyReference::Pin);
    block(&mut card, KeyReference::Puk);
    assert_eq!(
        status(&mut card, &commands::reset_application()),
        StatusWord::Success
    );

    let image = CardImage::load(&path).unwrap();
    assert!(image.keys.is_empty(), "{image:?}");
    assert!(image.objects.is_empty(), "{image:?}");
    assert_eq!(image.card.serial, serial);
    assert_eq!(image.pin.value.as_bytes(), b"123456");
    assert_eq!(image.puk.value.as_bytes(), b"12345678");
    assert_eq!((image.pin.retries_left, image.pin.max_retries), (3, 3));
    assert_eq!((image.puk.retries_left, image.puk.max_retries), (3, 3));
    assert!(image.management_key.ct_eq(&ManagementKey::default_key()));

    // The card itself answers as a new one: no CHUID, no 9A key, default PIN.
    assert_eq!(
        status(&mut card, &commands::get_data(ObjectTag::Chuid)),
        StatusWord::NotFound
    );
    assert_eq!(
        status(
            &mut card,
            &commands::verify_pin(KeyReference::Pin, &pin("123456"))
        ),
        StatusWord::Success
    );
    let sign = commands::sign(
        Algorithm::EccP256,
        KeyReference::PivAuthentication,
        &[1; 32],
    );
    assert_eq!(status(&mut card, &sign), StatusWord::ReferencedDataNotFound);
    let mut backend = VirtualCardBackend::new(VirtualCard::open(&path).unwrap(), "reopened");
    let mut session = PivSession::open(&mut backend).unwrap();
    session
        .authenticate_management_key(&ManagementKey::default_key())
        .unwrap();
    session
        .change_puk(&puk("12345678"), &puk("87654321"))
        .unwrap();
}

#[test]
fn reset_security_state_is_cleared() {
    let mut card = personalised_card();
    assert_eq!(status(&mut card, &commands::select()), StatusWord::Success);
    block(&mut card, KeyReference::Pin);
    block(&mut card, KeyReference::Puk);
    assert_eq!(
        status(&mut card, &commands::reset_application()),
        StatusWord::Success
    );
    // Neither the PIN nor the management key counts as verified afterwards.
    assert_eq!(
        status(&mut card, &commands::verify_status(KeyReference::Pin)),
        StatusWord::RetriesLeft(3)
    );
    let generate = commands::generate_key_pair(KeyReference::PivAuthentication, Algorithm::EccP256);
    assert_eq!(
        status(&mut card, &generate),
        StatusWord::SecurityStatusNotSatisfied
    );
}

#[test]
fn reset_is_refused_over_contactless() {
    let mut card = personalised_card();
    assert_eq!(status(&mut card, &commands::select()), StatusWord::Success);
    block(&mut card, KeyReference::Pin);
    block(&mut card, KeyReference::Puk);
    card.present_as(CardOptions {
        extended_length: true,
        interface: Interface::Contactless,
    });
    assert_eq!(
        status(&mut card, &commands::reset_application()),
        StatusWord::SecurityStatusNotSatisfied
    );
    assert!(
        card.applet()
            .persistent
            .keys
            .contains_key(&KeyReference::PivAuthentication)
    );
}

#[test]
fn factory_card_is_blank() {
    let mut card = VirtualCard::blank(NewCard::factory(CardOptions::default()));
    let image = card.to_image().unwrap();
    assert!(image.keys.is_empty() && image.objects.is_empty());
    assert!(image.management_key.ct_eq(&ManagementKey::default_key()));
    assert_eq!(status(&mut card, &commands::select()), StatusWord::Success);
    for object in [ObjectTag::Chuid, ObjectTag::Discovery] {
        assert_eq!(
            status(&mut card, &commands::get_data(object)),
            StatusWord::NotFound
        );
    }
    assert_eq!(
        status(
            &mut card,
            &commands::verify_pin(KeyReference::Pin, &pin("123456"))
        ),
        StatusWord::Success
    );
}
