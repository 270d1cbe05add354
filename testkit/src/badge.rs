//! The fixture badges (`fixtures/cards/*.toml`, certificates from the test CA) and the people they belong to.
//!
//! A badge is always opened in memory from its image: the fixture file is never
//! written back, so tests may block, reset or change the PIN of their copy.

use std::convert::Infallible;
use std::path::PathBuf;

use pivtap_apdu::piv::{Algorithm, KeyReference, Pin};
use pivtap_card::{PivSession, factory};
use pivtap_protocol::assertion::AssertionDraft;
use pivtap_protocol::certificate::CertificateFacts;
use pivtap_protocol::jose::JwsAlgorithm;
use pivtap_protocol::wire::{AssertionPayload, ChallengeResponse, UserRecord};
use pivtap_server::store::User;
use pivtap_vcard::image::CardImage;
use pivtap_vcard::{VirtualCard, VirtualCardBackend};
use time::OffsetDateTime;

use crate::fixture;
use crate::forge::{card_signature, card_signs};
use crate::server::{active_user, user_record};

/// The slot every fixture badge signs in with: 9A, PIV Authentication.
pub const SLOT: KeyReference = KeyReference::PivAuthentication;

/// The factory management key ([`factory::MANAGEMENT_KEY`]) as hex, as yubico-piv-tool
/// and `pivtap` take it on their command lines.
pub const FACTORY_MANAGEMENT_KEY_HEX: &str = "010203040506070801020304050607080102030405060708";

/// A fixture badge and the directory entry of the person it belongs to (no `Debug`: it
/// holds a PIN and a PUK, which never reach test output).
#[derive(Clone, Copy)]
pub struct Badge {
    /// The image's name: `fixtures/cards/NAME.toml`.
    pub name: &'static str,
    /// Its PIN.
    pub pin: &'static str,
    /// Its PUK (the factory PUK on every fixture badge).
    pub puk: &'static str,
    /// The user id its certificate maps to (by `san.email -> mail`).
    pub user_id: &'static str,
    /// That user's display name.
    pub display_name: &'static str,
    /// That user's mail address, which the certificate carries.
    pub mail: &'static str,
}

/// Alice's badge: RSA-2048 in 9A.
pub const ALICE: Badge = Badge {
    name: "alice",
    pin: "123456",
    puk: factory::PUK,
    user_id: "alice",
    display_name: "Alice Example",
    mail: "alice@example.com",
};
/// Bob's badge: P-256 in 9A, an 8-digit PIN.
pub const BOB: Badge = Badge {
    name: "bob",
    pin: "24681357",
    puk: factory::PUK,
    user_id: "bob",
    display_name: "Bob Example",
    mail: "bob@example.com",
};
/// Carol's badge.
pub const CAROL: Badge = Badge {
    name: "carol",
    pin: "123456",
    puk: factory::PUK,
    user_id: "carol",
    display_name: "Carol Example",
    mail: "carol@example.com",
};
/// A badge whose certificate has expired (Dave's).
pub const EXPIRED: Badge = Badge {
    name: "expired",
    pin: "123456",
    puk: factory::PUK,
    user_id: "dave",
    display_name: "Dave Expired",
    mail: "dave@example.com",
};
/// A badge from a CA the server does not trust (Eve's).
pub const UNTRUSTED: Badge = Badge {
    name: "untrusted",
    pin: "123456",
    puk: factory::PUK,
    user_id: "eve",
    display_name: "Eve Rogue",
    mail: "eve@example.com",
};

impl Badge {
    /// The image file, `fixtures/cards/NAME.toml`.
    #[must_use]
    pub fn image_path(&self) -> PathBuf {
        fixture(&format!("cards/{}.toml", self.name))
    }

    /// The card image, loaded from the fixture.
    #[must_use]
    pub fn image(&self) -> CardImage {
        let path = self.image_path();
        CardImage::load(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
    }

    /// The badge as a card backend named NAME, in memory (never written back).
    #[must_use]
    pub fn backend(&self) -> VirtualCardBackend {
        let card = VirtualCard::from_image(&self.image())
            .unwrap_or_else(|error| panic!("the fixture card {} opens: {error}", self.name));
        VirtualCardBackend::new(card, self.name)
    }

    /// The algorithm of the 9A key.
    #[must_use]
    pub fn key(&self) -> Algorithm {
        key_of(&self.image())
    }

    /// Opens a fresh in-memory copy of the badge and runs `work` with a PIV session on it
    /// and the 9A key's algorithm.
    pub fn with_session<T>(&self, work: impl FnOnce(&mut PivSession<'_>, Algorithm) -> T) -> T {
        let image = self.image();
        let card = VirtualCard::from_image(&image)
            .unwrap_or_else(|error| panic!("the fixture card {} opens: {error}", self.name));
        let mut backend = VirtualCardBackend::new(card, self.name);
        let mut session = PivSession::open(&mut backend).expect("the PIV applet selects");
        work(&mut session, key_of(&image))
    }

    /// The PIN as the card API takes it.
    #[must_use]
    pub fn pin(&self) -> Pin {
        Pin::new(self.pin).expect("a valid fixture PIN")
    }

    /// The 9A certificate, DER, as the device reads it from the card.
    #[must_use]
    pub fn certificate(&self) -> Vec<u8> {
        self.with_session(|session, _| session.certificate(SLOT).expect("a 9A certificate"))
    }

    /// The certificate serial as the server names the card.
    #[must_use]
    pub fn serial(&self) -> String {
        CertificateFacts::from_der(&self.certificate())
            .expect("the fixture certificate parses")
            .serial
    }

    /// The JOSE algorithm that fits the 9A key.
    #[must_use]
    pub fn algorithm(&self) -> JwsAlgorithm {
        jws_algorithm(self.key())
    }

    /// The badge signs `message` as `algorithm` with its 9A key, after its PIN.
    #[must_use]
    pub fn sign(&self, algorithm: JwsAlgorithm, message: &[u8]) -> Vec<u8> {
        self.with_session(|session, key| {
            session
                .verify_pin(&self.pin())
                .expect("the fixture PIN verifies");
            card_signature(session, key, algorithm, message)
        })
    }

    /// A draft answering `challenge` on `device`, with the algorithm that fits the key and
    /// the time now.
    #[must_use]
    pub fn draft(&self, challenge: &ChallengeResponse, device: &str) -> AssertionDraft {
        self.draft_with(AssertionPayload::for_challenge(
            challenge,
            device,
            SLOT,
            OffsetDateTime::now_utc().unix_timestamp(),
        ))
    }

    /// A draft answering `challenge` on `device` whose header claims `alg` whatever the
    /// key (the draft's own algorithm stays the one that fits the key): a forgery.
    #[must_use]
    pub fn draft_as(
        &self,
        alg: &str,
        challenge: &ChallengeResponse,
        device: &str,
    ) -> AssertionDraft {
        let mut draft = self.draft(challenge, device);
        alg.clone_into(&mut draft.header.alg);
        draft
    }

    /// A draft of `payload` with the algorithm that fits the key and the badge's certificate.
    #[must_use]
    pub fn draft_with(&self, payload: AssertionPayload) -> AssertionDraft {
        AssertionDraft::new(self.algorithm(), &self.certificate(), payload)
    }

    /// `draft` signed by the badge with the draft's algorithm.
    #[must_use]
    pub fn signed(&self, draft: &AssertionDraft) -> String {
        draft
            .sign(|algorithm, message| Ok::<_, Infallible>(self.sign(algorithm, message)))
            .unwrap_or_else(|never| match never {})
    }

    /// The badge's assertion answering `challenge` on `device`.
    #[must_use]
    pub fn assertion(&self, challenge: &ChallengeResponse, device: &str) -> String {
        let payload = AssertionPayload::for_challenge(
            challenge,
            device,
            SLOT,
            OffsetDateTime::now_utc().unix_timestamp(),
        );
        // One session for the certificate and the signature, as a kiosk's tap does.
        self.with_session(|session, key| {
            let certificate = session.certificate(SLOT).expect("a 9A certificate");
            let draft = AssertionDraft::new(jws_algorithm(key), &certificate, payload);
            session
                .verify_pin(&self.pin())
                .expect("the fixture PIN verifies");
            card_signs(session, key, &draft)
        })
    }

    /// The person as the store keeps them: active, no UPN, no employee id.
    #[must_use]
    pub fn user(&self) -> User {
        active_user(self.user_id, self.display_name, self.mail)
    }

    /// The person as the admin API sends them (`POST /admin/users`).
    #[must_use]
    pub fn user_record(&self) -> UserRecord {
        user_record(self.user_id, self.display_name, self.mail)
    }
}

/// The algorithm of an image's 9A key.
fn key_of(image: &CardImage) -> Algorithm {
    image
        .keys
        .iter()
        .find(|entry| entry.slot() == SLOT)
        .expect("the fixture card has a 9A key")
        .algorithm()
}

/// The JOSE algorithm that fits a fixture card's key.
fn jws_algorithm(key: Algorithm) -> JwsAlgorithm {
    JwsAlgorithm::for_piv_key(u8::from(key))
        .unwrap_or_else(|| panic!("no fixture card has a {key:?} key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_management_key_hex_is_the_factory_key() {
        let mut hex = String::new();
        for byte in factory::MANAGEMENT_KEY {
            hex.push_str(&format!("{byte:02x}"));
        }
        assert_eq!(FACTORY_MANAGEMENT_KEY_HEX, hex);
    }

    #[test]
    fn every_badge_opens_with_a_9a_key_and_a_certificate_from_its_mail() {
        for badge in [ALICE, BOB, CAROL, EXPIRED, UNTRUSTED] {
            let certificate = badge.certificate();
            let facts = CertificateFacts::from_der(&certificate).expect("the certificate parses");
            assert!(
                facts.emails.iter().any(|mail| mail == badge.mail),
                "{}: {:?}",
                badge.name,
                facts.emails
            );
            assert_eq!(badge.algorithm(), jws_algorithm(badge.key()));
        }
    }
}
