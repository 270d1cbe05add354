//! Reading a badge (CHUID, 9A certificate, PIN tries) and signing a sign-in assertion with it, on a connection the card thread hands over.

use std::sync::Arc;
use std::time::Instant;

use pivtap_apdu::piv::objects::chuid::Chuid;
use pivtap_apdu::piv::{Algorithm, KeyReference, Pin};
use pivtap_card::{CardBackend, PivError, PivSession};
use pivtap_protocol::assertion::{AssertionDraft, signature_verifies};
use pivtap_protocol::certificate::CertificateFacts;
use pivtap_protocol::jose::JwsAlgorithm;
use pivtap_protocol::wire::{AssertionPayload, ChallengeResponse};
use time::OffsetDateTime;

use super::cache::CertificateCache;
use super::failure::CardFailure;
use crate::core::{CardSummary, Step};
use pivtap_client::card_signer::{card_signature, signing_algorithms};

/// The key that signs sign-in assertions: PIV authentication.
pub(super) const SIGNING_SLOT: KeyReference = KeyReference::PivAuthentication;

/// A card's authentication certificate and how its key signs.
pub(super) struct CardCertificate {
    /// The certificate (`der`), its SHA-256 (`fingerprint`) and holder (`common_name`).
    pub(super) facts: CertificateFacts,
    key: Algorithm,
    algorithm: JwsAlgorithm,
    /// The public key as signature verification takes it: for RSA the DER `RSAPublicKey`,
    /// for EC the SEC1 point (the content of the SPKI's BIT STRING).
    public_key: Vec<u8>,
}

impl CardCertificate {
    pub(super) fn from_der(der: &[u8]) -> Result<Self, CardFailure> {
        let (facts, public_key) = CertificateFacts::with_public_key(der)?;
        let (key, algorithm) =
            signing_algorithms(facts.key).ok_or(CardFailure::UnsupportedKey(facts.key))?;
        Ok(CardCertificate {
            facts,
            key,
            algorithm,
            public_key,
        })
    }

    /// Whether `signature` (JOSE form: RSA raw, ECDSA `r || s`) over `message` verifies with
    /// this certificate's public key, exactly as the server will check it.
    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        signature_verifies(self.algorithm, &self.public_key, message, signature)
    }
}

/// A card's certificate as the card thread knows it for one tap, and where it came from.
#[derive(Clone)]
pub(super) struct KnownCertificate {
    pub(super) certificate: Arc<CardCertificate>,
    /// The card's CHUID GUID, when it has one that can key the cache.
    pub(super) guid: Option<[u8; 16]>,
    /// Whether it came from the cache (and may be stale: the card may have been renewed)
    /// rather than from the card during this tap.
    from_cache: bool,
}

/// Who a card belongs to, as read from it.
struct Identity {
    /// The CHUID GUID in its 8-4-4-4-12 form.
    card_guid: Option<String>,
    certificate: KnownCertificate,
}

/// What a read found on a badge.
pub(super) struct BadgeRead {
    /// Whose badge it is, as the kiosk shows it.
    pub(super) summary: CardSummary,
    /// Its certificate, for the sign that follows.
    pub(super) certificate: KnownCertificate,
    /// The PIN tries left, or `None` when they were not read (the card does not tell, or
    /// the badge's PIN was right the last time it was here).
    pub(super) tries_left: Option<u8>,
}

/// SELECT, the CHUID, the 9A certificate unless the cache knows the card's GUID, and the
/// PIN tries left unless the badge's PIN was right the last time it was here.
pub(super) fn read_badge(
    card: &mut dyn CardBackend,
    cache: &mut CertificateCache,
) -> Result<BadgeRead, CardFailure> {
    let started = Instant::now();
    let mut session = PivSession::open(card)?;
    let identity = identify(&mut session, cache)?;
    // A badge whose PIN was right the last time it was here: its tries are full
    // (wrong PINs elsewhere aside, which VERIFY will tell), so the APDU is saved.
    let known_good = identity.certificate.from_cache
        && identity
            .certificate
            .guid
            .is_some_and(|guid| cache.pin_known_good(&guid));
    let tries_left = if known_good {
        None
    } else {
        pin_tries_left(&mut session)?
    };
    log_exchange("read", &session, started);
    Ok(BadgeRead {
        summary: CardSummary {
            holder_name: identity.certificate.certificate.facts.common_name.clone(),
            card_guid: identity.card_guid,
        },
        certificate: identity.certificate,
        tries_left,
    })
}

/// Reads the CHUID, then the 9A certificate unless the cache knows the card's GUID.
fn identify(
    session: &mut PivSession<'_>,
    cache: &mut CertificateCache,
) -> Result<Identity, CardFailure> {
    // An all-zero GUID names no card in particular, so it is not a cache key.
    let chuid = read_chuid(session)?.filter(|chuid| chuid.guid != [0; 16]);
    let guid = chuid.as_ref().map(|chuid| chuid.guid);
    let cached = guid.and_then(|guid| cache.get(&guid));
    let certificate = match cached {
        Some(certificate) => {
            tracing::debug!(
                fingerprint = %certificate.facts.fingerprint,
                "the card's certificate comes from the cache"
            );
            KnownCertificate {
                certificate,
                guid,
                from_cache: true,
            }
        }
        None => read_certificate(session, cache, guid)?,
    };
    Ok(Identity {
        card_guid: chuid.as_ref().map(Chuid::guid_hex),
        certificate,
    })
}

/// Reads the 9A certificate from the card and caches it under `guid`.
fn read_certificate(
    session: &mut PivSession<'_>,
    cache: &mut CertificateCache,
    guid: Option<[u8; 16]>,
) -> Result<KnownCertificate, CardFailure> {
    let certificate = Arc::new(CardCertificate::from_der(
        &session.certificate(SIGNING_SLOT)?,
    )?);
    if let Some(guid) = guid {
        cache.put(guid, Arc::clone(&certificate));
    }
    Ok(KnownCertificate {
        certificate,
        guid,
        from_cache: false,
    })
}

/// Checks that the card's 9A certificate has the SHA-256 `expected`; a cached certificate
/// that differs is read again first (the card may have been renewed since it was cached).
pub(super) fn check_card(
    session: &mut PivSession<'_>,
    cache: &mut CertificateCache,
    expected: &str,
) -> Result<(), CardFailure> {
    let mut known = identify(session, cache)?.certificate;
    if known.certificate.facts.fingerprint != expected && known.from_cache {
        known = read_certificate(session, cache, known.guid)?;
    }
    if known.certificate.facts.fingerprint == expected {
        Ok(())
    } else {
        Err(CardFailure::OtherCard)
    }
}

/// The CHUID, or `None` when the card has none (or an unreadable one); only a transport
/// failure is an error.
fn read_chuid(session: &mut PivSession<'_>) -> Result<Option<Chuid>, PivError> {
    match session.chuid() {
        Ok(chuid) => Ok(Some(chuid)),
        Err(error @ PivError::Transport(_)) => Err(error),
        Err(error) => {
            tracing::debug!(%error, "no usable CHUID; the certificate is not cached");
            Ok(None)
        }
    }
}

/// The PIN tries left, or `None` when the card does not tell without a PIN (contactless
/// cards refuse); only a transport failure is an error.
fn pin_tries_left(session: &mut PivSession<'_>) -> Result<Option<u8>, PivError> {
    match session.pin_retries() {
        Ok(tries) => Ok(tries),
        Err(error @ PivError::Transport(_)) => Err(error),
        Err(error) => {
            tracing::debug!(%error, "the card does not tell its PIN tries");
            Ok(None)
        }
    }
}

/// What [`super::CardJob::Sign`] asks of the card.
pub(super) struct SignRequest {
    /// The PIN; dropped (zeroized) as soon as VERIFY is sent.
    pub(super) pin: Pin,
    /// The server's challenge: its nonce and audience go into the assertion.
    pub(super) challenge: ChallengeResponse,
    /// This device's id, as the server knows it.
    pub(super) device: String,
}

/// SELECT, the certificate unless `certificate` has it, VERIFY, and the signature,
/// checked against the certificate; a stale cached certificate is replaced by the card's
/// and the assertion signed again. `certificate` is left holding the card's certificate
/// once known. `progress` hears of [`Step::Verifying`] and [`Step::Signing`].
pub(super) fn sign_in(
    card: &mut dyn CardBackend,
    cache: &mut CertificateCache,
    certificate: &mut Option<KnownCertificate>,
    request: SignRequest,
    mut progress: impl FnMut(Step),
) -> Result<String, CardFailure> {
    let SignRequest {
        pin,
        challenge,
        device,
    } = request;
    let started = Instant::now();
    let mut session = PivSession::open(card)?;
    let signer = match certificate {
        Some(known) => known.clone(),
        None => certificate
            .insert(identify(&mut session, cache)?.certificate)
            .clone(),
    };
    progress(Step::Verifying);
    let verified = session.verify_pin(&pin);
    drop(pin);
    verified?;
    progress(Step::Signing);
    let payload = AssertionPayload::for_challenge(
        &challenge,
        device,
        SIGNING_SLOT,
        OffsetDateTime::now_utc().unix_timestamp(),
    );
    let signed = match sign_assertion(&mut session, &signer.certificate, payload.clone()) {
        Err(failure) if signer.from_cache && failure.hints_at_a_new_key() => {
            // The card was most likely renewed since its certificate was cached: read
            // the certificate it holds now and sign again (the PIN is still verified).
            tracing::info!(
                error = %failure,
                stale = %signer.certificate.facts.fingerprint,
                "the cached certificate does not fit the card's key; reading it again"
            );
            if let Some(guid) = signer.guid {
                cache.remove(&guid);
            }
            let fresh = certificate.insert(read_certificate(&mut session, cache, signer.guid)?);
            sign_assertion(&mut session, &fresh.certificate, payload)
        }
        signed => signed,
    };
    // Some cards keep a verified PIN across the reset that ends the connection: log it
    // out, so the badge is not left PIN-verified for other programs. A badge that leaves
    // during the log-out left before its tap was done.
    let logged_out = session.log_out_pin();
    log_exchange("sign", &session, started);
    let assertion = signed?;
    logged_out?;
    Ok(assertion)
}

/// Debug-logs what a card job exchanged: APDUs, bytes, and the time from opening the
/// session to the last response (`pivtap kiosk` with `RUST_LOG=pivtap_kiosk=debug`).
fn log_exchange(job: &str, session: &PivSession<'_>, started: Instant) {
    let stats = session.stats();
    tracing::debug!(
        job,
        apdus = stats.apdus,
        bytes_sent = stats.bytes_sent,
        bytes_received = stats.bytes_received,
        card_ms = started.elapsed().as_secs_f64() * 1e3,
        "card exchange"
    );
}

/// Signs the assertion for `payload` with the card's 9A key, as `certificate` says the key
/// signs, and checks the signature with the certificate's public key.
fn sign_assertion(
    session: &mut PivSession<'_>,
    certificate: &CardCertificate,
    payload: AssertionPayload,
) -> Result<String, CardFailure> {
    let draft = AssertionDraft::new(certificate.algorithm, &certificate.facts.der, payload);
    draft.sign(|algorithm, signing_input| {
        let signature = card_signature(
            session,
            SIGNING_SLOT,
            certificate.key,
            algorithm,
            signing_input,
        )?;
        if certificate.verifies(signing_input, &signature) {
            Ok(signature)
        } else {
            Err(CardFailure::KeyMismatch)
        }
    })
}

#[cfg(test)]
mod tests {
    use pivtap_apdu::piv::Ins;
    use pivtap_vcard::{
        CardOptions, Interface, NewCard, Quirk, Quirks, VirtualCard, VirtualCardBackend,
    };

    use super::*;
    use crate::card_worker::test_rig::{
        ALICE_PIN, BOB_PIN, Rig, SIGN_AFTER_A_READ, fixture_image, guid_of, verify,
    };
    use crate::core::{AuthFailure, CardReadFailure};
    use crate::readers::tests::fixture_card;

    #[tokio::test]
    async fn a_read_tells_whose_card_it_is_and_the_pin_tries_left() {
        let mut rig = Rig::new();
        let alice = fixture_card("alice");
        rig.tap(&alice);
        let (summary, tries_left) = rig.read().await.unwrap();
        assert_eq!(summary.holder_name.as_deref(), Some("Alice Example"));
        assert_eq!(summary.card_guid, Some(guid_of(&alice)));
        assert_eq!(tries_left, Some(3));
        assert_eq!(rig.readers.take().certificate_reads(), 1);
    }

    #[tokio::test]
    async fn a_sign_after_a_read_is_three_apdus_and_a_log_out_and_the_server_accepts_it() {
        let mut rig = Rig::new();
        rig.tap(&fixture_card("alice"));
        rig.read().await.unwrap();
        rig.readers.take_instructions();
        let assertion = rig.sign(ALICE_PIN).await.unwrap();
        assert_eq!(verify(&assertion), "RS256");
        assert_eq!(rig.readers.take_instructions(), SIGN_AFTER_A_READ);
    }

    #[tokio::test]
    async fn a_sign_without_a_read_reads_the_card_first() {
        let mut rig = Rig::new();
        rig.tap(&fixture_card("bob"));
        let assertion = rig.sign(BOB_PIN).await.unwrap();
        assert_eq!(verify(&assertion), "ES256");
        assert_eq!(rig.readers.take().certificate_reads(), 1);

        // Tapped again: the certificate comes from the cache.
        rig.tap(&fixture_card("bob"));
        let assertion = rig.sign(BOB_PIN).await.unwrap();
        assert_eq!(verify(&assertion), "ES256");
        assert_eq!(
            rig.readers.take_instructions(),
            [
                Ins::Select,
                Ins::GetData,
                Ins::Verify,
                Ins::GeneralAuthenticate,
                Ins::Verify
            ]
        );
    }

    #[tokio::test]
    async fn after_signing_the_card_no_longer_holds_the_verified_pin() {
        let mut rig = Rig::new();
        let alice = fixture_card("alice");
        rig.tap(&alice);
        rig.sign(ALICE_PIN).await.unwrap();
        let mut card = alice.clone();
        let mut session = PivSession::open(&mut card).unwrap();
        assert_eq!(session.pin_retries().unwrap(), Some(3), "not verified");
    }

    #[tokio::test]
    async fn a_badge_that_keeps_its_pin_across_reset_is_logged_out_after_signing() {
        let mut rig = Rig::new();
        let alice = fixture_card("alice");
        alice
            .card()
            .set_quirks(Quirks::NONE.with(Quirk::KeepPinOnReset));
        rig.tap(&alice);
        rig.sign(ALICE_PIN).await.unwrap();
        let mut card = alice.clone();
        let mut session = PivSession::open(&mut card).unwrap();
        assert_eq!(
            session.pin_retries().unwrap(),
            Some(3),
            "another program does not find the PIN verified"
        );
    }

    #[tokio::test]
    async fn a_plain_6300_is_a_wrong_pin_with_the_tries_unknown() {
        let mut rig = Rig::new();
        let alice = fixture_card("alice");
        alice
            .card()
            .set_quirks(Quirks::NONE.with(Quirk::PlainWrongPinStatus));
        rig.tap(&alice);
        assert_eq!(
            rig.sign("000000").await,
            Err(AuthFailure::WrongPin { tries_left: None })
        );
        assert_eq!(rig.sign(ALICE_PIN).await.map(drop), Ok(()));
    }

    #[tokio::test]
    async fn a_card_without_a_certificate_is_not_a_badge() {
        let mut rig = Rig::new();
        let blank = VirtualCard::blank(NewCard::factory(CardOptions::default()));
        rig.tap(&VirtualCardBackend::new(blank, "blank"));
        assert_eq!(rig.read().await, Err(CardReadFailure::NotPiv));
        assert_eq!(rig.sign(ALICE_PIN).await, Err(AuthFailure::CardError));
    }

    #[tokio::test]
    async fn a_contactless_card_that_will_not_tell_its_tries_still_reads() {
        let mut rig = Rig::new();
        let alice = fixture_card("alice");
        rig.tap(&alice);
        rig.read().await.unwrap();
        // Over contactless the 9A certificate is not readable, but the cache has it.
        alice.card().set_options(CardOptions {
            extended_length: false,
            interface: Interface::Contactless,
        });
        rig.tap(&alice);
        let (summary, tries_left) = rig.read().await.unwrap();
        assert_eq!(summary.holder_name.as_deref(), Some("Alice Example"));
        assert_eq!(tries_left, None);
    }

    #[tokio::test]
    async fn a_card_whose_key_does_not_match_its_own_certificate_is_refused_once_read() {
        let mut rig = Rig::new();
        // Carol's key under Alice's certificate: the card itself is inconsistent.
        let mut image = fixture_image("alice");
        image.keys = fixture_image("carol").keys;
        let broken = VirtualCardBackend::new(VirtualCard::from_image(&image).unwrap(), "broken");
        rig.tap(&broken);
        rig.read().await.unwrap();
        rig.readers.take();
        assert_eq!(rig.sign(ALICE_PIN).await, Err(AuthFailure::CardError));
        assert_eq!(
            rig.readers.take_instructions(),
            SIGN_AFTER_A_READ,
            "a certificate read during this tap is not read again"
        );
    }
}
