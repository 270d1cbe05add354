//! Card enrollment and renewal end to end: virtual cards against the embedded server, every cut and refusal along the way.

use pivtap_apdu::piv::objects::chuid::Chuid;
use pivtap_apdu::piv::{Algorithm, Pin};
use pivtap_card::{CardBackend, ManagementKey, PivError, PivSession};
use pivtap_client::client::Client;
use pivtap_protocol::certificate::CertificateFacts;
use pivtap_protocol::wire::{ChallengeResponse, KeyAlgorithm, MAX_DEVICE_ID_LEN};
use pivtap_testkit::fixture;
use pivtap_testkit::pki::fixture_der;
use time::OffsetDateTime;

use std::path::Path;

use pivtap_server::verifier::{AssertionVerifier, VerifierConfig};
use pivtap_vcard::{CardOptions, NewCard, VirtualCard, VirtualCardBackend};

use pivtap_client::enrollment::*;

#[test]
fn renewal_challenges_are_asked_for_in_the_renewal_namespace_without_a_credential() {
    let client = Client::new(
        "https://127.0.0.1:1",
        pivtap_client::client::ServerTrust::SystemRoots,
        std::time::Duration::from_secs(1),
    )
    .unwrap();
    assert_eq!(renewal_device(&client, "desk-1"), "renewal:desk-1");
    assert_eq!(renewal_device(&client, "renewal:desk-1"), "renewal:desk-1");
    let long = "d".repeat(MAX_DEVICE_ID_LEN);
    let renewal = renewal_device(&client, &long);
    assert_eq!(renewal.len(), MAX_DEVICE_ID_LEN);
    assert!(pivtap_protocol::wire::is_valid_device_id(&renewal));
}

const AUDIENCE: &str = "https://auth.example.test";
const NONCE: &str = "q2Vv8y3a1lL3m8W4k9dQeXh7c2VjcmV0LW5vbmNlLTMy";

/// A fixture card, opened from a copy (a card writes its state back).
fn fixture_card(name: &str, dir: &Path) -> VirtualCardBackend {
    let copy = dir.join(format!("{name}.toml"));
    std::fs::copy(fixture(&format!("cards/{name}.toml")), &copy).unwrap();
    VirtualCardBackend::new(VirtualCard::open(&copy).unwrap(), name)
}

#[test]
fn the_shared_assertion_is_one_the_server_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let verifier = AssertionVerifier::new(VerifierConfig::new(
        AUDIENCE,
        vec![fixture_der("ca/test-ca.pem")],
    ))
    .unwrap();
    let challenge = ChallengeResponse {
        nonce: NONCE.to_owned(),
        aud: AUDIENCE.to_owned(),
        expires_at: "2099-01-01T00:00:00Z".to_owned(),
    };
    let mut algorithms = Vec::new();
    for (name, pin) in [("alice", "123456"), ("bob", "24681357")] {
        let mut backend = fixture_card(name, dir.path());
        let mut session = PivSession::open(&mut backend).unwrap();
        let certificate = session.certificate(SLOT).unwrap();
        session.verify_pin(&Pin::new(pin).unwrap()).unwrap();
        let assertion =
            sign_assertion(&mut session, SLOT, &certificate, &challenge, "kiosk-07").unwrap();
        let verified = verifier
            .verify(&assertion, OffsetDateTime::now_utc())
            .unwrap();
        assert_eq!(verified.payload.nonce, NONCE);
        assert_eq!(verified.payload.device, "kiosk-07");
        assert_eq!(verified.payload.slot, "9a");
        assert_eq!(verified.certificate.der, certificate);
        algorithms.push(verified.alg);
    }
    assert_eq!(algorithms.len(), 2);
}

#[test]
fn without_the_pin_no_assertion_is_signed() {
    let dir = tempfile::tempdir().unwrap();
    let mut backend = fixture_card("alice", dir.path());
    let mut session = PivSession::open(&mut backend).unwrap();
    let certificate = session.certificate(SLOT).unwrap();
    let challenge = ChallengeResponse {
        nonce: NONCE.to_owned(),
        aud: AUDIENCE.to_owned(),
        expires_at: String::new(),
    };
    let error =
        sign_assertion(&mut session, SLOT, &certificate, &challenge, "kiosk-07").unwrap_err();
    assert!(
        matches!(error, EnrollError::Card(PivError::AccessDenied { .. })),
        "{error:?}"
    );
    let error =
        sign_assertion(&mut session, SLOT, b"not a certificate", &challenge, "k").unwrap_err();
    assert!(
        matches!(error, EnrollError::CurrentCertificate { .. }),
        "{error:?}"
    );
}

#[test]
fn a_new_chuid_is_non_federal_random_and_expires_with_the_certificate() {
    let expires = OffsetDateTime::from_unix_timestamp(1_924_992_000).unwrap(); // 2031-01-01
    let first = new_chuid(expires).unwrap();
    let parsed = Chuid::parse(&first.encode()).unwrap();
    assert_eq!(parsed.fascn().unwrap().to_string(), NON_FEDERAL_FASCN);
    assert_eq!(parsed.expiration, "20310101");
    assert_eq!(parsed.guid, first.guid);
    assert_ne!(
        new_chuid(expires).unwrap().guid,
        first.guid,
        "GUIDs are random"
    );
}

#[test]
fn only_steps_from_key_generation_on_have_replaced_the_key() {
    let before = [
        EnrollStep::InspectingCode,
        EnrollStep::CheckingRevocation,
        EnrollStep::FetchingChallenge,
        EnrollStep::VerifyingPin,
        EnrollStep::SigningAssertion,
        EnrollStep::AuthenticatingManagementKey,
    ];
    assert!(before.iter().all(|step| !step.key_replaced()));
    let after = [
        EnrollStep::GeneratingKey(KeyAlgorithm::P256),
        EnrollStep::SigningRequest,
        EnrollStep::RequestingCertificate,
        EnrollStep::StoringCertificate,
        EnrollStep::WritingChuid,
    ];
    assert!(after.iter().all(|step| step.key_replaced()));
    assert!(
        EnrollStep::GeneratingKey(KeyAlgorithm::Rsa2048)
            .to_string()
            .contains("this can take a while")
    );
}

#[test]
fn debug_output_shows_no_secret() {
    let secrets = CardSecrets {
        pin: Pin::new("24091357").unwrap(),
        management_key: ManagementKey::from_hex(
            Algorithm::Aes128,
            "00112233445566778899aabbccddeeff",
        )
        .unwrap(),
    };
    let text = format!("{secrets:?}");
    assert!(!text.contains("24091357"), "{text}");
    assert!(!text.contains("00112233"), "{text}");
}

/// An embedded server with the user `erin`, a client, and its admin token.
async fn embedded_server(
    dir: &Path,
) -> (
    pivtap_server::server::embedded::EmbeddedServer,
    Client,
    String,
) {
    use pivtap_server::server::embedded::EmbeddedServer;
    use pivtap_server::store::{User, UserState};
    let user = User {
        id: "erin".to_owned(),
        display_name: "Erin Example".to_owned(),
        mail: Some("erin@example.com".to_owned()),
        upn: None,
        employee_id: None,
        state: UserState::Active,
    };
    let server = EmbeddedServer::start(dir, Vec::new(), &[user])
        .await
        .unwrap();
    // The tests sign in as the registered device desk-1.
    let client = server
        .device_client("desk-1", std::time::Duration::from_secs(30))
        .await
        .unwrap();
    let server_dir = server.certificate.parent().unwrap().to_path_buf();
    let token = std::fs::read_to_string(server_dir.join("admin.token")).unwrap();
    (server, client, token.trim().to_owned())
}

fn secrets() -> CardSecrets {
    CardSecrets {
        pin: Pin::new("123456").unwrap(),
        management_key: ManagementKey::default_key(),
    }
}

#[tokio::test]
async fn enrollment_and_renewal_go_step_by_step_and_a_revoked_card_is_left_alone() {
    use pivtap_client::client::CardAction;

    let dir = tempfile::tempdir().unwrap();
    let (_server, client, token) = embedded_server(dir.path()).await;
    let code = client
        .admin(&token)
        .create_enrollment("erin", std::time::Duration::from_secs(600))
        .await
        .unwrap()
        .code;
    let mut backend = VirtualCardBackend::new(
        VirtualCard::blank(NewCard::factory(CardOptions::default())),
        "erin's card",
    );
    let options = EnrollOptions {
        secrets: secrets(),
        device: Some("desk-1".to_owned()),
    };
    let mut steps = Vec::new();
    let enrolled = enroll_card(&mut backend, &client, &code, &options, &mut |step| {
        steps.push(step);
    })
    .await
    .unwrap();
    assert_eq!(
        steps,
        [
            EnrollStep::InspectingCode,
            EnrollStep::AuthenticatingManagementKey,
            EnrollStep::VerifyingPin,
            EnrollStep::GeneratingKey(KeyAlgorithm::P256),
            EnrollStep::SigningRequest,
            EnrollStep::RequestingCertificate,
            EnrollStep::StoringCertificate,
            EnrollStep::WritingChuid,
        ]
    );
    assert_eq!(enrolled.user.id, "erin");
    assert!(enrolled.chuid_written);
    let card_serial = enrolled.card_serial.expect("the virtual card has a serial");

    let renew_options = RenewOptions {
        secrets: secrets(),
        device: "desk-1".to_owned(),
        algorithm: None,
    };
    steps.clear();
    let renewed = renew_card(&mut backend, &client, &renew_options, &mut |step| {
        steps.push(step);
    })
    .await
    .unwrap();
    assert_eq!(
        steps,
        [
            EnrollStep::CheckingRevocation,
            EnrollStep::VerifyingPin,
            EnrollStep::FetchingChallenge,
            EnrollStep::SigningAssertion,
            EnrollStep::AuthenticatingManagementKey,
            EnrollStep::GeneratingKey(KeyAlgorithm::P256),
            EnrollStep::SigningRequest,
            EnrollStep::RequestingCertificate,
            EnrollStep::StoringCertificate,
            EnrollStep::ConfirmingRenewal,
        ]
    );
    assert_ne!(renewed.serial, enrolled.serial);
    assert_eq!(renewed.card_serial, Some(card_serial));
    assert_eq!(renewed.chuid_guid, enrolled.chuid_guid, "the CHUID stays");

    // Revoked by the admin: renewal stops at the CRL, before the PIN or the key.
    client
        .admin(&token)
        .card_action(&renewed.serial, CardAction::Revoke)
        .await
        .unwrap();
    // A fresh power-up, so that the PIN is no longer verified.
    backend.card().reset();
    steps.clear();
    let error = renew_card(&mut backend, &client, &renew_options, &mut |step| {
        steps.push(step);
    })
    .await
    .unwrap_err();
    assert!(
        matches!(&error, EnrollError::Revoked { serial } if *serial == renewed.serial),
        "{error:?}"
    );
    assert_eq!(steps, [EnrollStep::CheckingRevocation]);
    let mut session = PivSession::open(&mut backend).unwrap();
    assert_eq!(session.pin_retries().unwrap(), Some(3), "no PIN try spent");
    let certificate = session.certificate(SLOT).unwrap();
    let facts = CertificateFacts::from_der(&certificate).unwrap();
    assert_eq!(facts.serial, renewed.serial, "the card is unchanged");
}

/// A card pulled from its reader after `left` more APDUs: the APDU that would exceed
/// the budget never reaches the card, and neither does any later one.
struct PulledAfter<'a> {
    card: &'a mut VirtualCardBackend,
    left: usize,
}

struct PulledTransaction<'a> {
    inner: Box<dyn pivtap_card::CardTransaction + 'a>,
    left: &'a mut usize,
}

impl pivtap_card::CardTransaction for PulledTransaction<'_> {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, pivtap_card::TransportError> {
        if *self.left == 0 {
            return Err(pivtap_card::TransportError::CardRemoved);
        }
        *self.left -= 1;
        self.inner.transmit(command)
    }
}

impl CardBackend for PulledAfter<'_> {
    fn transaction(
        &mut self,
    ) -> Result<Box<dyn pivtap_card::CardTransaction + '_>, pivtap_card::TransportError> {
        Ok(Box::new(PulledTransaction {
            inner: self.card.transaction()?,
            left: &mut self.left,
        }))
    }

    fn capabilities(&self) -> pivtap_card::LinkCapabilities {
        self.card.capabilities()
    }

    fn name(&self) -> String {
        self.card.name()
    }
}

/// Signs in with what the card holds now (its 9A certificate and key).
async fn sign_in_with(
    backend: &mut VirtualCardBackend,
    client: &Client,
) -> Result<String, EnrollError> {
    let challenge = client.challenge("desk-1").await?;
    let mut session = PivSession::open(backend)?;
    let certificate = session.certificate(SLOT)?;
    session.verify_pin(&secrets().pin)?;
    let assertion = sign_assertion(&mut session, SLOT, &certificate, &challenge, "desk-1")?;
    Ok(client.sign_in(&assertion).await?.user.id)
}

fn renew_options() -> RenewOptions {
    RenewOptions {
        secrets: secrets(),
        device: "desk-1".to_owned(),
        algorithm: None,
    }
}

/// Issue 11, item 5: a renewal cut at every APDU (the card pulled) leaves a badge that
/// signs in or renews again, but for the one cut no card allows undoing (between key
/// generation and the server's answer), where the server still holds the old
/// certificate valid. Before, 9 of 45 renewals cut by SIGKILL left a dead badge: the
/// old certificate was revoked before the card held the new one.
#[tokio::test]
async fn a_renewal_cut_at_any_apdu_leaves_a_badge_that_signs_in_or_renews() {
    use pivtap_client::client::AuditFilter;

    let dir = tempfile::tempdir().unwrap();
    let (_server, client, token) = embedded_server(dir.path()).await;
    let admin = client.admin(&token);
    let mut backend = VirtualCardBackend::new(
        VirtualCard::blank(NewCard::factory(CardOptions::default())),
        "erin's card",
    );
    let enroll = async |backend: &mut VirtualCardBackend| {
        let code = admin
            .create_enrollment("erin", std::time::Duration::from_secs(600))
            .await
            .unwrap()
            .code;
        let options = EnrollOptions {
            secrets: secrets(),
            device: None,
        };
        enroll_card(backend, &client, &code, &options, &mut |_| {})
            .await
            .unwrap();
    };
    enroll(&mut backend).await;
    let mut cuts = Vec::new();
    let mut recovered = Vec::new();
    for budget in 0.. {
        let before = {
            let mut session = PivSession::open(&mut backend).unwrap();
            CertificateFacts::from_der(&session.certificate(SLOT).unwrap()).unwrap()
        };
        backend.card().reset();
        let mut last = None;
        let result = renew_card(
            &mut PulledAfter {
                card: &mut backend,
                left: budget,
            },
            &client,
            &renew_options(),
            &mut |step| last = Some(step),
        )
        .await;
        if result.is_ok() {
            assert!(budget > 8, "a renewal takes more than {budget} APDUs");
            break;
        }
        // Put back in the reader: a fresh power-up.
        backend.card().reset();
        cuts.push(last);
        // The server never revokes the old certificate before the card holds the new one.
        let old = admin
            .list_cards()
            .await
            .unwrap()
            .into_iter()
            .find(|card| card.serial == before.serial)
            .unwrap();
        assert_eq!(old.state, "active", "cut at {budget} APDUs after {last:?}");
        if last == Some(EnrollStep::SigningRequest) {
            // The new key is in 9A and the server never saw it: the card must be
            // enrolled again; its old certificate is still valid at the server.
            let stuck = sign_in_with(&mut backend, &client).await;
            assert!(
                matches!(&stuck, Err(EnrollError::Server(error)) if error.to_string().contains("signature_invalid")),
                "{stuck:?}"
            );
            backend.card().reset();
            enroll(&mut backend).await;
            continue;
        }
        // Signs in as it is, or else renews again (resuming a recorded renewal) and
        // then signs in.
        backend.card().reset();
        if sign_in_with(&mut backend, &client).await.is_err() {
            backend.card().reset();
            let resumed = renew_card(&mut backend, &client, &renew_options(), &mut |step| {
                recovered.push((last, step));
            })
            .await
            .unwrap_or_else(|error| panic!("cut at {budget} APDUs after {last:?}: {error}"));
            assert_ne!(resumed.serial, before.serial);
            backend.card().reset();
        }
        assert_eq!(
            sign_in_with(&mut backend, &client).await.unwrap(),
            "erin",
            "cut at {budget} APDUs after {last:?}"
        );
    }
    for step in [
        EnrollStep::VerifyingPin,
        EnrollStep::SigningAssertion,
        EnrollStep::GeneratingKey(KeyAlgorithm::P256),
        EnrollStep::SigningRequest,
        EnrollStep::StoringCertificate,
        EnrollStep::ConfirmingRenewal,
    ] {
        assert!(
            cuts.contains(&Some(step)),
            "no cut during {step:?}: {cuts:?}"
        );
    }
    // A cut before the new certificate was stored was resumed, not renewed anew.
    assert!(
        recovered.contains(&(
            Some(EnrollStep::StoringCertificate),
            EnrollStep::ResumingRenewal
        )),
        "{recovered:?}"
    );
    // Every renewal the server recorded has its audit event; every superseded card
    // names the certificate that replaced it.
    let audit = admin
        .audit(&AuditFilter {
            limit: Some(1000),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    for card in admin.list_cards().await.unwrap() {
        let named = |event: &pivtap_protocol::wire::AuditRecord| {
            event.card_serial.as_deref() == Some(card.serial.as_str())
                || event
                    .detail
                    .as_deref()
                    .is_some_and(|detail| detail.contains(&card.serial))
        };
        assert!(
            audit.iter().any(|event| event.outcome == "ok"
                && (event.kind == "enrollment" || event.kind == "renewal")
                && named(event)),
            "no audit event issued {card:?}"
        );
    }
}

/// Issue 11, item 5: an enrollment cut at every APDU (the card pulled) either leaves the
/// code unused, and the same code enrolls the card, or has used it up with its audit
/// event (written with the code's use, in one transaction), and a new code enrolls the
/// card. Before, 2 of 7 cut enrollments used the code up with no audit event.
#[tokio::test]
async fn an_enrollment_cut_at_any_apdu_uses_its_code_only_with_its_audit_event() {
    use pivtap_client::client::AuditFilter;

    let dir = tempfile::tempdir().unwrap();
    let (_server, client, token) = embedded_server(dir.path()).await;
    let admin = client.admin(&token);
    let new_code = async || {
        admin
            .create_enrollment("erin", std::time::Duration::from_secs(600))
            .await
            .unwrap()
            .code
    };
    let options = EnrollOptions {
        secrets: secrets(),
        device: None,
    };
    let mut steps_cut = Vec::new();
    for budget in 0.. {
        let mut backend = VirtualCardBackend::new(
            VirtualCard::blank(NewCard::factory(CardOptions::default())),
            "erin's card",
        );
        let code = new_code().await;
        let mut last = None;
        let result = enroll_card(
            &mut PulledAfter {
                card: &mut backend,
                left: budget,
            },
            &client,
            &code,
            &options,
            &mut |step| last = Some(step),
        )
        .await;
        if result.is_ok() {
            break;
        }
        steps_cut.push(last);
        backend.card().reset();
        let events = admin.audit(&AuditFilter::default()).await.unwrap();
        let enrolled: Vec<_> = events
            .iter()
            .filter(|event| event.kind == "enrollment" && event.outcome == "ok")
            .collect();
        let issued = admin.list_cards().await.unwrap();
        // Every card registered has its enrollment event.
        for card in &issued {
            assert!(
                enrolled
                    .iter()
                    .any(|event| event.card_serial.as_deref() == Some(card.serial.as_str())),
                "cut at {budget} APDUs after {last:?}: no event for {card:?}"
            );
        }
        let code = match client.inspect_enrollment(&code).await {
            Ok(_) => code,
            Err(_) => {
                // Used up: only with its event, and only once the server answered.
                assert!(
                    matches!(
                        last,
                        Some(EnrollStep::StoringCertificate | EnrollStep::WritingChuid)
                    ),
                    "cut at {budget} APDUs after {last:?}"
                );
                new_code().await
            }
        };
        enroll_card(&mut backend, &client, &code, &options, &mut |_| {})
            .await
            .unwrap_or_else(|error| panic!("cut at {budget} APDUs after {last:?}: {error}"));
        backend.card().reset();
        assert_eq!(sign_in_with(&mut backend, &client).await.unwrap(), "erin");
        // Clean up, so that the next cut starts from one card per user.
        for card in admin.list_cards().await.unwrap() {
            admin
                .card_action(&card.id, pivtap_client::client::CardAction::Revoke)
                .await
                .unwrap();
            admin.delete_card(&card.id).await.unwrap();
        }
    }
    for step in [
        EnrollStep::AuthenticatingManagementKey,
        EnrollStep::SigningRequest,
        EnrollStep::StoringCertificate,
        EnrollStep::WritingChuid,
    ] {
        assert!(
            steps_cut.contains(&Some(step)),
            "no cut during {step:?}: {steps_cut:?}"
        );
    }
}

#[test]
fn key_algorithms_map_both_ways() {
    for algorithm in [
        KeyAlgorithm::Rsa2048,
        KeyAlgorithm::P256,
        KeyAlgorithm::P384,
    ] {
        assert_eq!(key_algorithm(card_algorithm(algorithm)), Some(algorithm));
    }
    assert_eq!(key_algorithm(Algorithm::TripleDes), None);
}
