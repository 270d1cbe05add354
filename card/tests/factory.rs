//! The factory defaults and `PivSession::factory_reset` against the virtual card: what a card ships with, and a reset back to it.

use pivtap_apdu::piv::{Algorithm, KeyReference, ObjectTag, Pin, Puk};
use pivtap_card::factory::{MANAGEMENT_KEY, PIN, PUK, management_key, pin, puk};
use pivtap_card::{JwsAlgorithm, ManagementKey, PinStatus, PivError, PivSession};
use pivtap_vcard::applet::{DEFAULT_PIN, DEFAULT_PUK};
use pivtap_vcard::{CardOptions, NewCard, VirtualCard, VirtualCardBackend};

#[test]
fn the_defaults_are_what_the_virtual_card_ships_with() {
    assert_eq!(DEFAULT_PIN, PIN.as_bytes());
    assert_eq!(DEFAULT_PUK, PUK.as_bytes());
    assert_eq!(*management_key().to_hex(), hex::encode(MANAGEMENT_KEY));
    let mut backend = VirtualCardBackend::new(
        VirtualCard::blank(NewCard::factory(CardOptions::default())),
        "factory",
    );
    let mut session = PivSession::open(&mut backend).unwrap();
    session.verify_pin(&pin()).unwrap();
    session.change_puk(&puk(), &puk()).unwrap();
    session
        .authenticate_management_key(&management_key())
        .unwrap();
}

/// A card with its own PIN, PUK and AES management key, a 9A key and a CHUID.
fn personalised() -> (VirtualCardBackend, ManagementKey) {
    let mut new = NewCard::factory(CardOptions::default());
    new.pin = Pin::new("918273").unwrap();
    new.puk = Puk::new("56473829").unwrap();
    new.management_key = ManagementKey::new(Algorithm::Aes192, &[0x42; 24]).unwrap();
    let key = new.management_key.clone();
    let mut backend = VirtualCardBackend::new(VirtualCard::blank(new), "personalised");
    let mut session = PivSession::open(&mut backend).unwrap();
    session.authenticate_management_key(&key).unwrap();
    session
        .generate_key(KeyReference::PivAuthentication, Algorithm::EccP256)
        .unwrap();
    session.put_object(ObjectTag::Chuid, &[0x30, 0x00]).unwrap();
    drop(session);
    (backend, key)
}

#[test]
fn factory_reset_restores_the_defaults_and_erases_keys_and_objects() {
    let (mut backend, own_key) = personalised();
    let mut session = PivSession::open(&mut backend).unwrap();
    assert!(session.read_object(ObjectTag::Chuid).is_ok());
    // PIN and PUK are not blocked: the reset blocks them itself.
    session.factory_reset().unwrap();
    drop(session);

    let mut session = PivSession::open(&mut backend).unwrap();
    assert_eq!(session.pin_status().unwrap(), PinStatus::RetriesLeft(3));
    session.verify_pin(&pin()).unwrap();
    session.change_puk(&puk(), &puk()).unwrap();
    assert!(session.authenticate_management_key(&own_key).is_err());
    session
        .authenticate_management_key(&management_key())
        .unwrap();
    assert!(matches!(
        session.read_object(ObjectTag::Chuid),
        Err(PivError::ObjectNotFound { .. })
    ));
    assert!(
        session
            .sign(
                KeyReference::PivAuthentication,
                Algorithm::EccP256,
                JwsAlgorithm::Es256,
                b"message",
            )
            .is_err()
    );
}

#[test]
fn factory_reset_of_a_card_already_blocked_resets_at_once() {
    let (mut backend, _) = personalised();
    let mut session = PivSession::open(&mut backend).unwrap();
    session.block_pin_and_puk().unwrap();
    assert_eq!(session.pin_status().unwrap(), PinStatus::Blocked);
    session.factory_reset().unwrap();
    drop(session);
    let mut session = PivSession::open(&mut backend).unwrap();
    session.verify_pin(&pin()).unwrap();
}
