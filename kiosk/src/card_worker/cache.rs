//! The card thread's certificate cache: badge certificates by CHUID GUID, in memory, least recently used first, and whether each badge's PIN was last seen right.

use std::collections::VecDeque;
use std::sync::Arc;

use super::badge::CardCertificate;

/// How many card certificates the cache keeps; the least recently used one goes first.
pub(super) const CACHED_CERTIFICATES: usize = 64;

/// Certificates by the CHUID GUID of their card, in memory only, least recently used first,
/// and whether the card's PIN was last seen right (so that its tries need not be read).
#[derive(Default)]
pub(super) struct CertificateCache {
    entries: VecDeque<CacheEntry>,
}

struct CacheEntry {
    guid: [u8; 16],
    certificate: Arc<CardCertificate>,
    /// The last VERIFY this kiosk sent the card succeeded: its PIN tries are full, unless
    /// someone got the PIN wrong elsewhere since.
    pin_known_good: bool,
}

impl CertificateCache {
    pub(super) fn get(&mut self, guid: &[u8; 16]) -> Option<Arc<CardCertificate>> {
        let index = self.entries.iter().position(|entry| entry.guid == *guid)?;
        let entry = self.entries.remove(index)?;
        let certificate = Arc::clone(&entry.certificate);
        self.entries.push_back(entry);
        Some(certificate)
    }

    pub(super) fn remove(&mut self, guid: &[u8; 16]) {
        self.entries.retain(|entry| entry.guid != *guid);
    }

    pub(super) fn put(&mut self, guid: [u8; 16], certificate: Arc<CardCertificate>) {
        self.remove(&guid);
        if self.entries.len() >= CACHED_CERTIFICATES {
            self.entries.pop_front();
        }
        self.entries.push_back(CacheEntry {
            guid,
            certificate,
            pin_known_good: false,
        });
    }

    pub(super) fn pin_known_good(&self, guid: &[u8; 16]) -> bool {
        self.entries
            .iter()
            .any(|entry| entry.guid == *guid && entry.pin_known_good)
    }

    /// Records how the last VERIFY of the card with this GUID went.
    pub(super) fn set_pin_known_good(&mut self, guid: &[u8; 16], good: bool) {
        if let Some(entry) = self.entries.iter_mut().find(|entry| entry.guid == *guid) {
            entry.pin_known_good = good;
        }
    }
}

#[cfg(test)]
mod tests {
    use pivtap_apdu::piv::{Ins, Pin};
    use pivtap_card::PivSession;

    use super::*;
    use crate::card_worker::test_rig::{
        ALICE_PIN, Rig, SIGN_AFTER_A_READ, fixture_der, guid_of, renew, signer_of, verify,
    };
    use crate::core::AuthFailure;
    use crate::readers::tests::fixture_card;

    #[test]
    fn the_cache_keeps_the_most_recently_used_certificates() {
        let certificate =
            Arc::new(CardCertificate::from_der(&fixture_der("certs/alice.pem")).unwrap());
        let guid = |n: usize| {
            let mut guid = [0; 16];
            guid[..8].copy_from_slice(&n.to_be_bytes());
            guid
        };
        let mut cache = CertificateCache::default();
        for n in 0..CACHED_CERTIFICATES {
            cache.put(guid(n), Arc::clone(&certificate));
        }
        assert!(cache.get(&guid(0)).is_some(), "refreshes the oldest");
        cache.put(guid(CACHED_CERTIFICATES), Arc::clone(&certificate));
        assert_eq!(cache.entries.len(), CACHED_CERTIFICATES);
        assert!(cache.get(&guid(0)).is_some());
        assert!(
            cache.get(&guid(1)).is_none(),
            "the least recently used went"
        );
        assert!(cache.get(&guid(CACHED_CERTIFICATES)).is_some());
        assert_eq!(
            certificate.facts.common_name.as_deref(),
            Some("Alice Example")
        );
    }

    #[tokio::test]
    async fn a_card_tapped_again_comes_from_the_cache() {
        let mut rig = Rig::new();
        let alice = fixture_card("alice");
        rig.tap(&alice);
        let first = rig.read().await.unwrap();
        assert_eq!(rig.readers.take().certificate_reads(), 1);
        rig.tap(&alice);
        assert_eq!(rig.read().await.unwrap(), first);
        let recorded = rig.readers.take();
        assert_eq!(recorded.certificate_reads(), 0);
        assert_eq!(
            recorded.instructions(),
            [Ins::Select, Ins::GetData, Ins::Verify],
            "SELECT, CHUID, PIN status"
        );
    }

    #[tokio::test]
    async fn a_badge_that_signed_in_here_is_read_again_without_its_pin_tries() {
        let mut rig = Rig::new();
        let alice = fixture_card("alice");
        rig.tap(&alice);
        rig.read().await.unwrap();
        rig.sign(ALICE_PIN).await.unwrap();
        rig.readers.take_instructions();

        // The repeat tap: SELECT and CHUID to know the badge, nothing else until the PIN.
        rig.tap(&alice);
        let (summary, tries_left) = rig.read().await.unwrap();
        assert_eq!(summary.holder_name.as_deref(), Some("Alice Example"));
        assert_eq!(tries_left, None, "not read");
        assert_eq!(rig.sign(ALICE_PIN).await.map(|_| ()), Ok(()));
        assert_eq!(
            rig.readers.take_instructions(),
            [
                Ins::Select,
                Ins::GetData,
                Ins::Select,
                Ins::Verify,
                Ins::GeneralAuthenticate,
                Ins::Verify
            ],
            "a repeat tap: five APDUs, and the PIN's log-out"
        );

        // After a wrong PIN the tries are worth showing again at the next tap.
        rig.tap(&alice);
        rig.read().await.unwrap();
        assert_eq!(
            rig.sign("654321").await,
            Err(AuthFailure::WrongPin {
                tries_left: Some(2)
            })
        );
        rig.tap(&alice);
        let (_, tries_left) = rig.read().await.unwrap();
        assert_eq!(tries_left, Some(2));
    }

    #[tokio::test]
    async fn a_known_badge_blocked_elsewhere_is_found_blocked_by_its_verify_and_can_be_unblocked() {
        let mut rig = Rig::new();
        let alice = fixture_card("alice");
        rig.tap(&alice);
        rig.read().await.unwrap();
        rig.sign(ALICE_PIN).await.unwrap();
        // Three wrong PINs on another device: this kiosk does not know.
        {
            let mut elsewhere = alice.clone();
            let mut session = PivSession::open(&mut elsewhere).unwrap();
            for _ in 0..3 {
                let _ = session.verify_pin(&Pin::new("000000").unwrap());
            }
            assert_eq!(session.pin_retries().unwrap(), Some(0));
        }
        rig.tap(&alice);
        assert_eq!(rig.read().await.unwrap().1, None, "tries not read");
        assert_eq!(rig.sign(ALICE_PIN).await, Err(AuthFailure::PinBlocked));
        // Found blocked by its VERIFY: the PUK may now unblock this badge, and the next tap
        // reads the tries again.
        assert_eq!(rig.unblock("12345678", "240913").await, Ok(()));
        rig.tap(&alice);
        assert_eq!(rig.read().await.unwrap().1, Some(3));
        assert!(rig.sign("240913").await.is_ok());
    }

    #[tokio::test]
    async fn a_renewed_card_signs_in_on_its_first_tap_after_one_more_certificate_read() {
        let mut rig = Rig::new();
        let alice = fixture_card("alice");
        let guid = guid_of(&alice);
        rig.tap(&alice);
        rig.read().await.unwrap();
        rig.sign(ALICE_PIN).await.unwrap();
        rig.readers.take();

        // Renewed with another RSA-2048 key (Carol's): same GUID, same algorithm.
        renew(&alice, "alice", "carol");
        assert_eq!(guid_of(&alice), guid, "renewal keeps the CHUID");
        rig.tap(&alice);
        let (summary, _) = rig.read().await.unwrap();
        assert_eq!(
            summary.holder_name.as_deref(),
            Some("Alice Example"),
            "the read still comes from the (stale) cache"
        );
        rig.readers.take();
        let assertion = rig.sign(ALICE_PIN).await.unwrap();
        assert_eq!(verify(&assertion), "RS256");
        assert_eq!(signer_of(&assertion), "Carol Example");
        let recorded = rig.readers.take();
        assert_eq!(recorded.certificate_reads(), 1);
        assert_eq!(
            recorded.instructions(),
            [
                Ins::Select,
                Ins::Verify,
                Ins::GeneralAuthenticate,
                Ins::GetData,
                Ins::GeneralAuthenticate,
                Ins::Verify
            ],
            "one PIN check; the stale signature, the certificate, the signature again"
        );

        // The cache now holds the new certificate: back to three APDUs (and the log-out) after the read.
        rig.tap(&alice);
        let (summary, _) = rig.read().await.unwrap();
        assert_eq!(summary.holder_name.as_deref(), Some("Carol Example"));
        rig.readers.take();
        let assertion = rig.sign(ALICE_PIN).await.unwrap();
        assert_eq!(signer_of(&assertion), "Carol Example");
        assert_eq!(rig.readers.take_instructions(), SIGN_AFTER_A_READ);
    }

    #[tokio::test]
    async fn a_card_renewed_to_another_algorithm_signs_without_a_read_first() {
        let mut rig = Rig::new();
        let alice = fixture_card("alice");
        rig.tap(&alice);
        assert_eq!(verify(&rig.sign(ALICE_PIN).await.unwrap()), "RS256");
        rig.readers.take();

        // Renewed with a P-256 key (Bob's): the card refuses to sign as RSA.
        renew(&alice, "alice", "bob");
        rig.tap(&alice);
        let assertion = rig.sign(ALICE_PIN).await.unwrap();
        assert_eq!(verify(&assertion), "ES256");
        let recorded = rig.readers.take();
        assert_eq!(recorded.certificate_reads(), 1);
        assert_eq!(
            recorded.instructions(),
            [
                Ins::Select,
                Ins::GetData,
                Ins::Verify,
                Ins::GeneralAuthenticate,
                Ins::GetData,
                Ins::GeneralAuthenticate,
                Ins::Verify
            ],
            "CHUID, PIN, refused signature, certificate, signature, log-out"
        );
        let mut card = alice.clone();
        let mut session = PivSession::open(&mut card).unwrap();
        assert_eq!(session.pin_retries().unwrap(), Some(3), "no PIN try spent");
    }
}
