//! The PIV session API against the in-process virtual card: every operation, its success and its failures.

use pivtap_apdu::piv::objects::chuid::Chuid;
use pivtap_apdu::piv::objects::discovery::Discovery;
use pivtap_apdu::piv::objects::public_key::PublicKey;
use pivtap_apdu::piv::{Algorithm, KeyReference, ObjectTag, PIV_AID, Pin, Puk};
use pivtap_card::session::PinStatus;
use pivtap_card::{JwsAlgorithm, ManagementKey, PivError, PivSession};
use pivtap_vcard::{CardOptions, Interface, NewCard, VirtualCard, VirtualCardBackend};

fn pin(text: &str) -> Pin {
    Pin::new(text).unwrap()
}

fn backend(options: CardOptions) -> VirtualCardBackend {
    VirtualCardBackend::new(VirtualCard::blank(NewCard::factory(options)), "test card")
}

fn contact() -> VirtualCardBackend {
    backend(CardOptions::default())
}

/// Generates a key in `slot` and returns its public key.
fn generate(
    backend: &mut VirtualCardBackend,
    slot: KeyReference,
    algorithm: Algorithm,
) -> PublicKey {
    let mut session = PivSession::open(backend).unwrap();
    session
        .authenticate_management_key(&ManagementKey::default_key())
        .unwrap();
    session.generate_key(slot, algorithm).unwrap()
}

fn verify_signature(
    public_key: &PublicKey,
    algorithm: JwsAlgorithm,
    message: &[u8],
    signature: &[u8],
) {
    match public_key {
        PublicKey::Rsa { modulus, exponent } => {
            use rsa::sha2::{Digest, Sha256, Sha512};
            let key = rsa::RsaPublicKey::new(
                rsa::BigUint::from_bytes_be(modulus),
                rsa::BigUint::from_bytes_be(exponent),
            )
            .unwrap();
            let result = match algorithm {
                JwsAlgorithm::Rs256 => key.verify(
                    rsa::Pkcs1v15Sign::new::<Sha256>(),
                    &Sha256::digest(message),
                    signature,
                ),
                JwsAlgorithm::Rs512 => key.verify(
                    rsa::Pkcs1v15Sign::new::<Sha512>(),
                    &Sha512::digest(message),
                    signature,
                ),
                other => panic!("{other} with an RSA key"),
            };
            result.expect("RSA signature verifies");
        }
        PublicKey::Ec {
            curve: Algorithm::EccP256,
            point,
        } => {
            use p256::ecdsa::signature::Verifier;
            let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(point).unwrap();
            let signature = p256::ecdsa::Signature::from_slice(signature).unwrap();
            key.verify(message, &signature)
                .expect("ES256 signature verifies");
        }
        PublicKey::Ec { point, .. } => {
            use p384::ecdsa::signature::Verifier;
            let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(point).unwrap();
            let signature = p384::ecdsa::Signature::from_slice(signature).unwrap();
            key.verify(message, &signature)
                .expect("ES384 signature verifies");
        }
    }
}

#[test]
fn select_reports_the_application() {
    let mut card = contact();
    let mut session = PivSession::open(&mut card).unwrap();
    let template = session.select().unwrap();
    assert!(PIV_AID.ends_with(&template.aid));
    assert!(template.algorithms.contains(&Algorithm::EccP256));
}

#[test]
fn wrong_pins_count_down_to_blocked_and_the_puk_unblocks() {
    let mut card = contact();
    let mut session = PivSession::open(&mut card).unwrap();
    assert_eq!(session.pin_status().unwrap(), PinStatus::RetriesLeft(3));
    assert!(matches!(
        session.verify_pin(&pin("999999")),
        Err(PivError::WrongPin {
            retries_left: Some(2)
        })
    ));
    assert!(matches!(
        session.verify_pin(&pin("999999")),
        Err(PivError::WrongPin {
            retries_left: Some(1)
        })
    ));
    assert!(matches!(
        session.verify_pin(&pin("999999")),
        Err(PivError::PinBlocked)
    ));
    // Blocked: even the right PIN is refused, and the status says so.
    assert!(matches!(
        session.verify_pin(&pin("123456")),
        Err(PivError::PinBlocked)
    ));
    assert_eq!(session.pin_status().unwrap(), PinStatus::Blocked);

    let wrong_puk = Puk::new("87654321").unwrap();
    assert!(matches!(
        session.unblock_pin(&wrong_puk, &pin("246810")),
        Err(PivError::WrongPuk {
            retries_left: Some(2)
        })
    ));
    assert_eq!(
        session.puk_status().unwrap(),
        Some(PinStatus::RetriesLeft(2))
    );
    session
        .unblock_pin(&Puk::new("12345678").unwrap(), &pin("246810"))
        .unwrap();
    assert_eq!(
        session.puk_status().unwrap(),
        Some(PinStatus::RetriesLeft(3))
    );
    assert_eq!(session.pin_status().unwrap(), PinStatus::RetriesLeft(3));
    session.verify_pin(&pin("246810")).unwrap();
    assert_eq!(session.pin_status().unwrap(), PinStatus::Verified);
}

#[test]
fn a_right_pin_restores_the_counter_and_reset_forgets_it() {
    let mut card = contact();
    let mut session = PivSession::open(&mut card).unwrap();
    assert!(session.verify_pin(&pin("000000")).is_err());
    session.verify_pin(&pin("123456")).unwrap();
    session.reset_pin_status().unwrap();
    assert_eq!(session.pin_status().unwrap(), PinStatus::RetriesLeft(3));
    drop(session);
    session_after_power_cycle(&mut card);
}

fn session_after_power_cycle(card: &mut VirtualCardBackend) {
    {
        let mut session = PivSession::open(card).unwrap();
        session.verify_pin(&pin("123456")).unwrap();
    }
    card.card().reset();
    let mut session = PivSession::open(card).unwrap();
    assert_eq!(
        session.pin_status().unwrap(),
        PinStatus::RetriesLeft(3),
        "power-off clears the PIN state"
    );
}

#[test]
fn puk_blocks_for_good() {
    let mut card = contact();
    let mut session = PivSession::open(&mut card).unwrap();
    let wrong = Puk::new("00000000").unwrap();
    for _ in 0..2 {
        assert!(matches!(
            session.change_puk(&wrong, &wrong),
            Err(PivError::WrongPuk { .. })
        ));
    }
    assert!(matches!(
        session.change_puk(&wrong, &wrong),
        Err(PivError::PukBlocked)
    ));
    assert!(matches!(
        session.unblock_pin(&Puk::new("12345678").unwrap(), &pin("123456")),
        Err(PivError::PukBlocked)
    ));
}

#[test]
fn change_pin_and_puk() {
    let mut card = contact();
    let mut session = PivSession::open(&mut card).unwrap();
    session
        .change_pin(&pin("123456"), &pin("86420975"))
        .unwrap();
    assert!(matches!(
        session.verify_pin(&pin("123456")),
        Err(PivError::WrongPin { .. })
    ));
    session.verify_pin(&pin("86420975")).unwrap();
    assert!(matches!(
        session.change_pin(&pin("111111"), &pin("222222")),
        Err(PivError::WrongPin {
            retries_left: Some(2)
        })
    ));
    let puk = Puk::new("12345678").unwrap();
    let new_puk = Puk::new("ABCDEFGH").unwrap();
    session.change_puk(&puk, &new_puk).unwrap();
    session.unblock_pin(&new_puk, &pin("135790")).unwrap();
    session.verify_pin(&pin("135790")).unwrap();
}

#[test]
fn writes_need_the_management_key() {
    let mut card = contact();
    let mut session = PivSession::open(&mut card).unwrap();
    assert!(matches!(
        session.put_object(ObjectTag::Chuid, &[0x34, 0x00]),
        Err(PivError::AccessDenied { .. })
    ));
    assert!(matches!(
        session.generate_key(KeyReference::PivAuthentication, Algorithm::EccP256),
        Err(PivError::AccessDenied { .. })
    ));
    let wrong = ManagementKey::new(Algorithm::TripleDes, &[0x55; 24]).unwrap();
    assert!(matches!(
        session.authenticate_management_key(&wrong),
        Err(PivError::ManagementKeyRejected)
    ));
    let aes = ManagementKey::new(Algorithm::Aes192, &[0x01; 24]).unwrap();
    assert!(matches!(
        session.authenticate_management_key(&aes),
        Err(PivError::ManagementKeyRejected)
    ));
    session
        .authenticate_management_key(&ManagementKey::default_key())
        .unwrap();
    let chuid = Chuid {
        guid: [7; 16],
        expiration: "20301231".to_owned(),
        ..Chuid::default()
    };
    session
        .put_object(ObjectTag::Chuid, &chuid.encode())
        .unwrap();
    assert_eq!(session.chuid().unwrap().guid, [7; 16]);
    let discovery = Discovery {
        aid: PIV_AID.to_vec(),
        pin_usage_policy: [0x40, 0x00],
    };
    session.put_discovery(&discovery).unwrap();
    assert_eq!(session.discovery().unwrap(), discovery);
    assert!(matches!(
        session.read_object(ObjectTag::KeyHistory),
        Err(PivError::ObjectNotFound { .. })
    ));
    assert!(matches!(
        session.read_object(ObjectTag::PrintedInformation),
        Err(PivError::AccessDenied { .. })
    ));
}

#[test]
fn every_algorithm_signs_what_its_public_key_verifies() {
    let cases = [
        (
            KeyReference::PivAuthentication,
            Algorithm::Rsa2048,
            JwsAlgorithm::Rs256,
        ),
        (
            KeyReference::KeyManagement,
            Algorithm::Rsa2048,
            JwsAlgorithm::Rs512,
        ),
        (
            KeyReference::CardAuthentication,
            Algorithm::EccP256,
            JwsAlgorithm::Es256,
        ),
        (
            KeyReference::Retired(3),
            Algorithm::EccP384,
            JwsAlgorithm::Es384,
        ),
    ];
    let mut card = contact();
    for (slot, key, algorithm) in cases {
        let public_key = generate(&mut card, slot, key);
        let mut session = PivSession::open(&mut card).unwrap();
        session.verify_pin(&pin("123456")).unwrap();
        let message = b"header.payload of a pivtap assertion";
        let signature = session.sign(slot, key, algorithm, message).unwrap();
        verify_signature(&public_key, algorithm, message, &signature);
        assert!(matches!(
            session.sign(
                slot,
                key,
                if key.is_rsa() {
                    JwsAlgorithm::Es256
                } else {
                    JwsAlgorithm::Rs256
                },
                message
            ),
            Err(PivError::Signature(_))
        ));
    }
}

#[test]
fn signing_needs_the_pin_and_9c_needs_it_every_time() {
    let mut card = contact();
    generate(
        &mut card,
        KeyReference::PivAuthentication,
        Algorithm::EccP256,
    );
    generate(
        &mut card,
        KeyReference::DigitalSignature,
        Algorithm::EccP256,
    );
    let mut session = PivSession::open(&mut card).unwrap();
    let sign = |session: &mut PivSession<'_>, slot| {
        session.sign(slot, Algorithm::EccP256, JwsAlgorithm::Es256, b"m")
    };
    assert!(matches!(
        sign(&mut session, KeyReference::PivAuthentication),
        Err(PivError::AccessDenied { .. })
    ));
    session.verify_pin(&pin("123456")).unwrap();
    sign(&mut session, KeyReference::PivAuthentication).unwrap();
    sign(&mut session, KeyReference::PivAuthentication).unwrap();
    sign(&mut session, KeyReference::DigitalSignature).unwrap();
    assert!(matches!(
        sign(&mut session, KeyReference::DigitalSignature),
        Err(PivError::AccessDenied { .. })
    ));
    session.verify_pin(&pin("123456")).unwrap();
    sign(&mut session, KeyReference::DigitalSignature).unwrap();
    assert!(matches!(
        sign(&mut session, KeyReference::KeyManagement),
        Err(PivError::NoKey { .. })
    ));
}

#[test]
fn key_agreement_matches_the_host_side() {
    let mut card = contact();
    let PublicKey::Ec { point, .. } =
        generate(&mut card, KeyReference::KeyManagement, Algorithm::EccP256)
    else {
        panic!("EC key expected");
    };
    let host_secret = p256::SecretKey::from_slice(&[0x42; 32]).unwrap();
    let host_public = host_secret.public_key().to_sec1_bytes();
    let mut session = PivSession::open(&mut card).unwrap();
    session.verify_pin(&pin("123456")).unwrap();
    let shared = session
        .key_agreement(
            KeyReference::KeyManagement,
            Algorithm::EccP256,
            &host_public,
        )
        .unwrap();
    let card_public = p256::PublicKey::from_sec1_bytes(&point).unwrap();
    let expected =
        p256::ecdh::diffie_hellman(host_secret.to_nonzero_scalar(), card_public.as_affine());
    assert_eq!(shared.as_slice(), expected.raw_secret_bytes().as_slice());
}

/// A certificate-sized object exercises chaining (short readers) or one
/// extended APDU, and 61xx / GET RESPONSE on the way back.
fn large_object_round_trip(options: CardOptions) -> pivtap_card::exchange::ExchangeStats {
    let mut card = backend(options);
    let certificate: Vec<u8> = (0..1500u32).map(|i| (i * 7) as u8).collect();
    {
        let mut session = PivSession::open(&mut card).unwrap();
        session
            .authenticate_management_key(&ManagementKey::default_key())
            .unwrap();
        session
            .put_certificate(KeyReference::PivAuthentication, &certificate)
            .unwrap();
    }
    let mut session = PivSession::open(&mut card).unwrap();
    let before = session.stats();
    assert_eq!(
        session
            .certificate(KeyReference::PivAuthentication)
            .unwrap(),
        certificate
    );
    let after = session.stats();
    pivtap_card::exchange::ExchangeStats {
        apdus: after.apdus - before.apdus,
        bytes_sent: after.bytes_sent - before.bytes_sent,
        bytes_received: after.bytes_received - before.bytes_received,
    }
}

#[test]
fn long_objects_travel_in_one_extended_apdu() {
    let stats = large_object_round_trip(CardOptions::default());
    assert_eq!(stats.apdus, 1, "one GET DATA with extended Le");
}

#[test]
fn long_objects_travel_by_chaining_and_get_response_on_short_readers() {
    let stats = large_object_round_trip(CardOptions {
        extended_length: false,
        interface: Interface::Contact,
    });
    // 1500 bytes of certificate + 13 of wrappers = 1513: one GET DATA and
    // five GET RESPONSEs of up to 256 bytes each.
    assert_eq!(stats.apdus, 6);
}

#[test]
fn contactless_allows_only_what_sp800_73_4_allows() {
    let mut card = contact();
    generate(
        &mut card,
        KeyReference::CardAuthentication,
        Algorithm::EccP256,
    );
    generate(
        &mut card,
        KeyReference::PivAuthentication,
        Algorithm::EccP256,
    );
    {
        let mut session = PivSession::open(&mut card).unwrap();
        session
            .authenticate_management_key(&ManagementKey::default_key())
            .unwrap();
        let chuid = Chuid {
            guid: [9; 16],
            expiration: "20301231".to_owned(),
            ..Chuid::default()
        };
        session
            .put_object(ObjectTag::Chuid, &chuid.encode())
            .unwrap();
        session
            .put_certificate(KeyReference::PivAuthentication, &[0x30, 0x00])
            .unwrap();
    }
    card.card().set_options(CardOptions {
        extended_length: false,
        interface: Interface::Contactless,
    });
    let mut session = PivSession::open(&mut card).unwrap();
    assert_eq!(session.chuid().unwrap().guid, [9; 16]);
    session
        .sign(
            KeyReference::CardAuthentication,
            Algorithm::EccP256,
            JwsAlgorithm::Es256,
            b"m",
        )
        .expect("9E works over contactless without a PIN");
    assert!(matches!(
        session.verify_pin(&pin("123456")),
        Err(PivError::Card { .. } | PivError::AccessDenied { .. })
    ));
    assert!(matches!(
        session.certificate(KeyReference::PivAuthentication),
        Err(PivError::AccessDenied { .. })
    ));
    assert!(matches!(
        session.sign(
            KeyReference::PivAuthentication,
            Algorithm::EccP256,
            JwsAlgorithm::Es256,
            b"m"
        ),
        Err(PivError::AccessDenied { .. })
    ));
    assert!(matches!(
        session.authenticate_management_key(&ManagementKey::default_key()),
        Err(PivError::Card { .. }
            | PivError::AccessDenied { .. }
            | PivError::ManagementKeyRejected)
    ));
}

#[test]
fn serial_and_metadata() {
    let mut card = contact();
    let serial = card.card().applet().persistent.serial;
    let mut session = PivSession::open(&mut card).unwrap();
    assert_eq!(session.serial().unwrap(), Some(serial));
    let metadata = session.metadata(KeyReference::Pin).unwrap().unwrap();
    assert_eq!(metadata.retries, Some((3, 3)));
    assert_eq!(metadata.is_default, Some(true));
    assert_eq!(
        session.metadata(KeyReference::PivAuthentication).unwrap(),
        None
    );
}
