//! Tests of protected virtual cards end to end through APDUs: sealed keys, PIN and PUK handling, RESET and the image format.

use p256::ecdsa::signature::Verifier as _;
use pivtap_apdu::piv::objects::public_key::PublicKey;
use pivtap_apdu::piv::{Algorithm, KeyReference, Pin, Puk, commands};
use pivtap_apdu::{CommandApdu, LengthMode, ResponseApdu, StatusWord};

use super::image::{CardImage, ImageError, StoredSecret};
use super::protection::KdfParams;
use super::protection::tests::fast;
use super::{CardOptions, NewCard, VirtualCard, VirtualCardBackend};
use pivtap_card::{JwsAlgorithm, ManagementKey, PinStatus, PivError, PivSession};

const PIN: &str = "918273";
const PUK: &str = "56473829";
const SLOT: KeyReference = KeyReference::PivAuthentication;

fn pin(text: &str) -> Pin {
    Pin::new(text).unwrap()
}

fn puk(text: &str) -> Puk {
    Puk::new(text).unwrap()
}

fn new_card() -> NewCard {
    let mut new = NewCard::factory(CardOptions::default());
    new.pin = pin(PIN);
    new.puk = puk(PUK);
    new
}

fn protected_backend() -> VirtualCardBackend {
    VirtualCardBackend::new(
        VirtualCard::blank_protected(new_card(), fast()).unwrap(),
        "protected",
    )
}

fn status(backend: &VirtualCardBackend, command: &CommandApdu) -> StatusWord {
    let raw = command.to_bytes(LengthMode::Extended).unwrap();
    ResponseApdu::from_bytes(&backend.card().transmit(&raw))
        .unwrap()
        .status()
}

/// Authenticates with the management key, verifies the PIN and generates a P-256 key in 9A.
fn with_9a_key(backend: &mut VirtualCardBackend) -> PublicKey {
    let mut session = PivSession::open(backend).unwrap();
    session
        .authenticate_management_key(&ManagementKey::default_key())
        .unwrap();
    session.verify_pin(&pin(PIN)).unwrap();
    session.generate_key(SLOT, Algorithm::EccP256).unwrap()
}

/// Signs with 9A after verifying `pin_text`, and checks the signature.
fn signs_with(backend: &mut VirtualCardBackend, public_key: &PublicKey, pin_text: &str) {
    let mut session = PivSession::open(backend).unwrap();
    session.verify_pin(&pin(pin_text)).unwrap();
    let signature = session
        .sign(SLOT, Algorithm::EccP256, JwsAlgorithm::Es256, b"challenge")
        .unwrap();
    let PublicKey::Ec { point, .. } = public_key else {
        panic!("a P-256 key has an EC public key");
    };
    let verifier = p256::ecdsa::VerifyingKey::from_sec1_bytes(point).unwrap();
    let signature = p256::ecdsa::Signature::from_slice(&signature).unwrap();
    verifier.verify(b"challenge", &signature).unwrap();
}

/// The card after a power cycle, reloaded from its own image text.
fn reloaded(backend: VirtualCardBackend) -> (VirtualCardBackend, String) {
    let Ok(card) = backend.into_card() else {
        panic!("the backend is not shared");
    };
    let text = card
        .to_image()
        .unwrap()
        .to_toml_string()
        .unwrap()
        .to_string();
    let image = CardImage::from_toml_str(&text).unwrap();
    let card = VirtualCard::from_image(&image).unwrap();
    (VirtualCardBackend::new(card, "reloaded"), text)
}

#[test]
fn generate_needs_the_pin_and_keys_are_sealed_in_the_image() {
    let mut backend = protected_backend();
    {
        let mut session = PivSession::open(&mut backend).unwrap();
        session
            .authenticate_management_key(&ManagementKey::default_key())
            .unwrap();
        assert!(matches!(
            session.generate_key(SLOT, Algorithm::EccP256),
            Err(PivError::AccessDenied { .. })
        ));
    }
    let public_key = with_9a_key(&mut backend);
    assert!(backend.card().applet().is_unlocked());
    let (mut backend, text) = reloaded(backend);
    assert!(text.contains("[protection]\nkdf = \"argon2id\""), "{text}");
    assert!(text.contains("sealed_private_key = "), "{text}");
    for secret in [PIN, PUK, "BEGIN PRIVATE KEY", "value = "] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    let image = CardImage::from_toml_str(&text).unwrap();
    assert!(image.is_protected());
    assert_eq!(image.keys[0].private_key_pem(), "");
    assert!(image.keys[0].sealed_key().is_some());
    assert!(image.pin.value.as_bytes().is_empty());

    // After the power cycle the key is locked until the PIN is verified.
    let sign = commands::sign(Algorithm::EccP256, SLOT, &[1; 32]);
    assert_eq!(status(&backend, &commands::select()), StatusWord::Success);
    assert_eq!(
        status(&backend, &sign),
        StatusWord::SecurityStatusNotSatisfied
    );
    assert!(!backend.card().applet().is_unlocked());
    signs_with(&mut backend, &public_key, PIN);

    // A power cycle locks it again.
    backend.card().reset();
    assert!(!backend.card().applet().is_unlocked());
    assert_eq!(status(&backend, &commands::select()), StatusWord::Success);
    assert_eq!(
        status(&backend, &sign),
        StatusWord::SecurityStatusNotSatisfied
    );
    // So does VERIFY's reset (P1 = FF).
    signs_with(&mut backend, &public_key, PIN);
    assert_eq!(
        status(&backend, &commands::verify_reset(KeyReference::Pin)),
        StatusWord::Success
    );
    assert!(!backend.card().applet().is_unlocked());
}

#[test]
fn wrong_pin_does_not_unlock_counts_down_and_blocks() {
    let mut backend = protected_backend();
    let public_key = with_9a_key(&mut backend);
    let (mut backend, _) = reloaded(backend);
    {
        let mut session = PivSession::open(&mut backend).unwrap();
        assert!(matches!(
            session.verify_pin(&pin("918274")),
            Err(PivError::WrongPin {
                retries_left: Some(2)
            })
        ));
        assert!(!session_unlocked(&mut session));
    }
    assert!(!backend.card().applet().is_unlocked());
    let (mut backend, text) = reloaded(backend);
    assert!(text.contains("retries_left = 2"), "{text}");
    {
        let mut session = PivSession::open(&mut backend).unwrap();
        // A right PIN restores the counter.
        session.verify_pin(&pin(PIN)).unwrap();
        assert_eq!(session.pin_status().unwrap(), PinStatus::Verified);
        for left in [2, 1] {
            assert!(matches!(
                session.verify_pin(&pin("000000")),
                Err(PivError::WrongPin { retries_left }) if retries_left == Some(left)
            ));
        }
        assert!(matches!(
            session.verify_pin(&pin("000000")),
            Err(PivError::PinBlocked)
        ));
        assert!(matches!(
            session.verify_pin(&pin(PIN)),
            Err(PivError::PinBlocked)
        ));
    }
    assert!(!backend.card().applet().is_unlocked());
    let sign = commands::sign(Algorithm::EccP256, SLOT, &[1; 32]);
    assert_eq!(
        status(&backend, &sign),
        StatusWord::SecurityStatusNotSatisfied
    );

    // The PUK unblocks and re-wraps the data key under the new PIN.
    {
        let mut session = PivSession::open(&mut backend).unwrap();
        assert!(matches!(
            session.unblock_pin(&puk("11111111"), &pin("246810")),
            Err(PivError::WrongPuk {
                retries_left: Some(2)
            })
        ));
        session.unblock_pin(&puk(PUK), &pin("246810")).unwrap();
        assert_eq!(session.pin_status().unwrap(), PinStatus::RetriesLeft(3));
        assert!(matches!(
            session.verify_pin(&pin(PIN)),
            Err(PivError::WrongPin {
                retries_left: Some(2)
            })
        ));
    }
    let (mut backend, _) = reloaded(backend);
    signs_with(&mut backend, &public_key, "246810");
}

/// Whether the card behind a session has its keys open (asks the card's 9A metadata).
fn session_unlocked(session: &mut PivSession<'_>) -> bool {
    session
        .metadata(SLOT)
        .unwrap()
        .is_some_and(|metadata| metadata.public_key.is_some())
}

#[test]
fn change_pin_and_puk_rewrap_the_data_key() {
    let mut backend = protected_backend();
    let public_key = with_9a_key(&mut backend);
    let before = backend.card().to_image().unwrap();
    {
        let mut session = PivSession::open(&mut backend).unwrap();
        assert!(matches!(
            session.change_pin(&pin("000000"), &pin("135792")),
            Err(PivError::WrongPin {
                retries_left: Some(2)
            })
        ));
        session.change_pin(&pin(PIN), &pin("135792")).unwrap();
        session.change_puk(&puk(PUK), &puk("97531864")).unwrap();
    }
    let after = backend.card().to_image().unwrap();
    assert_ne!(before.pin.value, after.pin.value);
    assert_ne!(before.puk.value, after.puk.value);
    assert_eq!(before.keys, after.keys, "the sealed keys stay as they were");
    let (mut backend, _) = reloaded(backend);
    {
        let mut session = PivSession::open(&mut backend).unwrap();
        assert!(matches!(
            session.verify_pin(&pin(PIN)),
            Err(PivError::WrongPin { .. })
        ));
        assert!(matches!(
            session.unblock_pin(&puk(PUK), &pin("112358")),
            Err(PivError::WrongPuk { .. })
        ));
    }
    signs_with(&mut backend, &public_key, "135792");
    {
        let mut session = PivSession::open(&mut backend).unwrap();
        session
            .unblock_pin(&puk("97531864"), &pin("112358"))
            .unwrap();
    }
    signs_with(&mut backend, &public_key, "112358");
}

#[test]
fn reset_only_when_blocked_and_the_card_stays_protected() {
    let mut backend = protected_backend();
    with_9a_key(&mut backend);
    let reset = commands::reset_application();
    assert_eq!(status(&backend, &reset), StatusWord::ConditionsNotSatisfied);
    {
        let mut session = PivSession::open(&mut backend).unwrap();
        while !matches!(
            session.verify_pin(&pin("000000")),
            Err(PivError::PinBlocked)
        ) {}
    }
    assert_eq!(status(&backend, &reset), StatusWord::ConditionsNotSatisfied);
    {
        let mut session = PivSession::open(&mut backend).unwrap();
        while !matches!(
            session.change_puk(&puk("00000000"), &puk("11111111")),
            Err(PivError::PukBlocked)
        ) {}
    }
    assert_eq!(status(&backend, &reset), StatusWord::Success);
    let image = backend.card().to_image().unwrap();
    assert!(image.is_protected());
    assert!(image.keys.is_empty());
    assert_eq!((image.pin.retries_left, image.puk.retries_left), (3, 3));
    let (mut backend, _) = reloaded(backend);
    let mut session = PivSession::open(&mut backend).unwrap();
    // The factory PIN is "default" (GET METADATA), and it unlocks the new data key.
    assert_eq!(
        session
            .metadata(KeyReference::Pin)
            .unwrap()
            .unwrap()
            .is_default,
        Some(true)
    );
    session
        .authenticate_management_key(&ManagementKey::default_key())
        .unwrap();
    assert!(matches!(
        session.generate_key(SLOT, Algorithm::EccP256),
        Err(PivError::AccessDenied { .. })
    ));
    session.verify_pin(&pin("123456")).unwrap();
    session.generate_key(SLOT, Algorithm::EccP256).unwrap();
    session.change_pin(&pin("123456"), &pin("246810")).unwrap();
    assert_eq!(
        session
            .metadata(KeyReference::Pin)
            .unwrap()
            .unwrap()
            .is_default,
        Some(false)
    );
}

#[test]
fn card_authentication_key_stays_usable_without_the_pin() {
    let mut backend = protected_backend();
    {
        let mut session = PivSession::open(&mut backend).unwrap();
        session
            .authenticate_management_key(&ManagementKey::default_key())
            .unwrap();
        session
            .generate_key(KeyReference::CardAuthentication, Algorithm::EccP256)
            .unwrap();
    }
    let (mut backend, text) = reloaded(backend);
    assert!(
        text.contains("slot = \"9e\"\nalgorithm = \"p256\"\nprivate_key = "),
        "{text}"
    );
    let mut session = PivSession::open(&mut backend).unwrap();
    session
        .sign(
            KeyReference::CardAuthentication,
            Algorithm::EccP256,
            JwsAlgorithm::Es256,
            b"tap",
        )
        .unwrap();
}

#[test]
fn metadata_of_a_locked_key_has_no_public_key() {
    let mut backend = protected_backend();
    let public_key = with_9a_key(&mut backend);
    let (mut backend, _) = reloaded(backend);
    let mut session = PivSession::open(&mut backend).unwrap();
    let locked = session.metadata(SLOT).unwrap().unwrap();
    assert_eq!(locked.algorithm, Some(u8::from(Algorithm::EccP256)));
    assert_eq!(locked.public_key, None);
    assert_eq!(
        session
            .metadata(KeyReference::Pin)
            .unwrap()
            .unwrap()
            .is_default,
        Some(false)
    );
    session.verify_pin(&pin(PIN)).unwrap();
    let open = session.metadata(SLOT).unwrap().unwrap();
    let PublicKey::Ec { point, .. } = public_key else {
        panic!("a P-256 key has an EC public key");
    };
    assert!(
        open.public_key
            .as_deref()
            .is_some_and(|inner| inner.windows(point.len()).any(|w| w == point.as_slice()))
    );
}

#[test]
fn protected_image_round_trips_and_saves_changes() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("protected.toml");
    let mut card = VirtualCard::blank_protected(new_card(), fast()).unwrap();
    card.save_as(&path).unwrap();
    let mut backend = VirtualCardBackend::new(card, "file");
    let public_key = with_9a_key(&mut backend);
    let text = std::fs::read_to_string(&path).unwrap();
    let image = CardImage::from_toml_str(&text).unwrap();
    assert_eq!(*image.to_toml_string().unwrap(), text);
    assert_eq!(image, CardImage::load(&path).unwrap());
    let mut reopened = VirtualCardBackend::new(VirtualCard::open(&path).unwrap(), "reopened");
    signs_with(&mut reopened, &public_key, PIN);
    // Debug shows neither the PIN nor key material.
    let shown = format!("{image:?}");
    assert!(
        shown.contains("WrappedKey(argon2id m=8 KiB t=1 p=1)"),
        "{shown}"
    );
    assert!(shown.contains("KeyEntry(9a, p256, REDACTED)"), "{shown}");
}

#[test]
fn recommended_parameters_are_what_new_protected_cards_get() {
    let card = VirtualCard::blank_protected(new_card(), KdfParams::RECOMMENDED).unwrap();
    let text = card.to_image().unwrap().to_toml_string().unwrap();
    assert!(
        text.contains("memory_kib = 19456\niterations = 2\nparallelism = 1\n"),
        "{}",
        *text
    );
}

#[test]
fn protected_images_refuse_inconsistent_files() {
    let mut backend = protected_backend();
    with_9a_key(&mut backend);
    let (_, text) = reloaded(backend);
    let error = |text: &str| CardImage::from_toml_str(text).unwrap_err();
    assert!(matches!(
        error(&text.replacen("[pin]\n", "[pin]\nvalue = \"918273\"\n", 1)),
        ImageError::ValueInProtectedImage { table: "pin" }
    ));
    assert!(matches!(
        error(&text.replace("kdf = \"argon2id\"", "kdf = \"scrypt\"")),
        ImageError::UnsupportedKdf { .. }
    ));
    assert!(matches!(
        error(&text.replace("memory_kib = 8", "memory_kib = 4")),
        ImageError::InvalidProtection { .. }
    ));
    assert!(matches!(
        error(&text.replacen("pin_salt = \"", "pin_salt = \"AAAA", 1)),
        ImageError::InvalidProtection { .. } | ImageError::ProtectionNotBase64 { .. }
    ));
    // Without [protection], sealed keys and missing values are refused.
    let start = text.find("[protection]").unwrap();
    let end = text[start..].find("\n\n").unwrap() + start + 2;
    let unprotected = format!("{}{}", &text[..start], &text[end..]);
    assert!(matches!(
        error(&unprotected),
        ImageError::MissingValue { table: "pin" }
    ));
    let with_values = unprotected
        .replacen("[pin]\n", "[pin]\nvalue = \"918273\"\n", 1)
        .replacen("[puk]\n", "[puk]\nvalue = \"56473829\"\n", 1);
    assert!(matches!(
        error(&with_values),
        ImageError::SealedKeyWithoutProtection { entry: 1, .. }
    ));
    // A sealed key moved to another slot loads, but does not open.
    let moved = text.replace("slot = \"9a\"", "slot = \"9c\"");
    let image = CardImage::from_toml_str(&moved).unwrap();
    let backend = VirtualCardBackend::new(VirtualCard::from_image(&image).unwrap(), "moved");
    assert_eq!(status(&backend, &commands::select()), StatusWord::Success);
    assert_eq!(
        status(
            &backend,
            &commands::verify_pin(KeyReference::Pin, &pin(PIN))
        ),
        StatusWord::NoPreciseDiagnosis
    );
    let both = text.replace(
        "sealed_private_key = ",
        "private_key = \"x\"\nsealed_private_key = ",
    );
    assert!(matches!(
        error(&both),
        ImageError::KeyMaterial { entry: 1, .. }
    ));
}

#[test]
fn image_holds_pin_and_puk_as_stored_secrets() {
    let card = VirtualCard::blank(new_card());
    let image = card.to_image().unwrap();
    assert!(!image.is_protected());
    assert!(matches!(image.pin.value, StoredSecret::Clear(_)));
    assert_eq!(image.pin.value.as_bytes(), PIN.as_bytes());
    assert_eq!(image.puk.value.as_bytes(), PUK.as_bytes());
}

#[test]
fn fixture_cards_load_and_save_byte_for_byte() {
    let directory = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/cards");
    let mut seen = 0;
    for entry in std::fs::read_dir(&directory).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let image = CardImage::from_toml_str(&text).unwrap();
        assert!(!image.is_protected());
        let card = VirtualCard::from_image(&image).unwrap();
        let written = card.to_image().unwrap().to_toml_string().unwrap();
        assert_eq!(*written, text, "{}", path.display());
        seen += 1;
    }
    assert!(seen >= 5, "only {seen} fixtures in {}", directory.display());
}
