//! Making a ready virtual sign-in card in one go: a blank card, a key generated in slot 9A, its certificate from the caller's issuer, a CHUID and the Discovery object.
//!
//! The issuer is the caller's (`pivtap vcard new` passes the server's CA): this crate does
//! not depend on the server, and the key never leaves the card: the issuer sees only the
//! public key as a DER SubjectPublicKeyInfo.

use pivtap_apdu::piv::objects::chuid::Chuid;
use pivtap_apdu::piv::objects::discovery::{Discovery, POLICY_APPLICATION_PIN};
use pivtap_apdu::piv::{Algorithm, KeyReference, ObjectTag, PIV_AID};
use pivtap_card::spki::{self, SpkiError};
use pivtap_card::{ManagementKey, PivError, PivSession};

use crate::protection::KdfParams;
use crate::{
    CardOptions, Interface, NewCard, Quirks, VirtualCard, VirtualCardBackend, VirtualCardError,
};

/// How a new card is provisioned.
#[derive(Debug, Clone, Copy)]
pub struct Provisioning<'a> {
    /// The key to authenticate with: the management key `NewCard` gives the card.
    pub management_key: &'a ManagementKey,
    /// The key to generate in slot 9A.
    pub algorithm: Algorithm,
    /// Seal the card's secrets under its PIN (a protected image), or not.
    pub protection: Option<KdfParams>,
    /// Third-party card behaviours to imitate.
    pub quirks: Quirks,
    /// The CHUID to write.
    pub chuid: &'a Chuid,
}

/// Why a card could not be provisioned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProvisionError {
    /// The blank card could not be made.
    #[error(transparent)]
    Blank(#[from] VirtualCardError),
    /// A step on the card failed (the step names it).
    #[error("{step}")]
    Step {
        /// What was being done.
        step: &'static str,
        /// The card's answer.
        #[source]
        source: PivError,
    },
    /// The generated key has no SubjectPublicKeyInfo encoding.
    #[error(transparent)]
    PublicKey(#[from] SpkiError),
    /// The issuer refused the certificate.
    #[error("the certificate for slot 9a could not be issued")]
    Issue(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The card was still shared when it should have been handed back (a bug).
    #[error("the new card is still in use")]
    InUse,
}

/// A blank card (no keys, no certificates) from `new_card`, sealed under its PIN when
/// `protection` is given, imitating `quirks`.
///
/// # Errors
/// [`VirtualCardError`] when a protected card cannot seal its secrets.
pub fn blank(
    new_card: NewCard,
    protection: Option<KdfParams>,
    quirks: Quirks,
) -> Result<VirtualCard, VirtualCardError> {
    let mut card = match protection {
        Some(kdf) => VirtualCard::blank_protected(new_card, kdf)?,
        None => VirtualCard::blank(new_card),
    };
    card.set_quirks(quirks);
    Ok(card)
}

/// A sign-in card: blank, then (over the contact interface, the card's own options restored
/// afterwards) the management key authenticated, a key generated in slot 9A, `issue`'s
/// certificate for its SubjectPublicKeyInfo stored, the CHUID and the Discovery object
/// written.
///
/// # Errors
/// [`ProvisionError`] naming the step that failed.
pub fn provision<E>(
    new_card: NewCard,
    how: &Provisioning<'_>,
    issue: impl FnOnce(&[u8]) -> Result<Vec<u8>, E>,
) -> Result<VirtualCard, ProvisionError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let options = new_card.options;
    let pin = new_card.pin.clone();
    let card = blank(
        NewCard {
            options: CardOptions {
                interface: Interface::Contact,
                ..options
            },
            ..new_card
        },
        how.protection,
        how.quirks,
    )?;
    let step = |step: &'static str| move |source: PivError| ProvisionError::Step { step, source };
    let mut backend = VirtualCardBackend::new(card, "new virtual card");
    {
        let mut session = PivSession::open(&mut backend).map_err(step("opening the card"))?;
        session
            .authenticate_management_key(how.management_key)
            .map_err(step("management key authentication"))?;
        if how.protection.is_some() {
            // A protected card generates keys only with its data key open.
            session.verify_pin(&pin).map_err(step("PIN verification"))?;
        }
        let public_key = session
            .generate_key(KeyReference::PivAuthentication, how.algorithm)
            .map_err(step("key generation in slot 9a"))?;
        let spki = spki::subject_public_key_info(&public_key)?;
        let certificate = issue(&spki).map_err(|error| ProvisionError::Issue(Box::new(error)))?;
        session
            .put_certificate(KeyReference::PivAuthentication, &certificate)
            .map_err(step("storing the certificate"))?;
        session
            .put_object(ObjectTag::Chuid, &how.chuid.encode())
            .map_err(step("writing the CHUID"))?;
        session
            .put_discovery(&Discovery {
                aid: PIV_AID.to_vec(),
                pin_usage_policy: [POLICY_APPLICATION_PIN, 0x00],
            })
            .map_err(step("writing the Discovery object"))?;
    }
    let Ok(mut card) = backend.into_card() else {
        return Err(ProvisionError::InUse);
    };
    card.set_options(options);
    card.reset();
    Ok(card)
}

#[cfg(test)]
mod tests {
    use pivtap_card::factory;

    use super::*;

    fn chuid() -> Chuid {
        Chuid {
            guid: [7; 16],
            expiration: "20301231".to_owned(),
            ..Chuid::default()
        }
    }

    fn new_card() -> NewCard {
        NewCard::factory(CardOptions::default())
    }

    /// A P-256 sign-in card, unprotected, with no quirks.
    fn p256_card<'a>(key: &'a ManagementKey, chuid: &'a Chuid) -> Provisioning<'a> {
        Provisioning {
            management_key: key,
            algorithm: Algorithm::EccP256,
            protection: None,
            quirks: Quirks::default(),
            chuid,
        }
    }

    #[test]
    fn a_provisioned_card_holds_the_issued_certificate_and_the_chuid() {
        let (key, chuid) = (factory::management_key(), chuid());
        let how = p256_card(&key, &chuid);
        let mut seen_spki = Vec::new();
        let card = provision(new_card(), &how, |spki| {
            seen_spki = spki.to_vec();
            Ok::<_, std::io::Error>(b"a certificate".to_vec())
        })
        .unwrap();
        assert!(!seen_spki.is_empty(), "the issuer saw the public key");
        let mut backend = VirtualCardBackend::new(card, "provisioned");
        let mut session = PivSession::open(&mut backend).unwrap();
        assert_eq!(
            session
                .certificate(KeyReference::PivAuthentication)
                .unwrap(),
            b"a certificate"
        );
        assert_eq!(session.chuid().unwrap().guid, [7; 16]);
    }

    #[test]
    fn an_issuer_that_refuses_is_named_and_no_card_comes_back() {
        let (key, chuid) = (factory::management_key(), chuid());
        let how = p256_card(&key, &chuid);
        let Err(refused) = provision(new_card(), &how, |_| {
            Err(std::io::Error::other("the CA is offline"))
        }) else {
            panic!("a card came back though the issuer refused");
        };
        assert!(matches!(refused, ProvisionError::Issue(_)), "{refused:?}");
        let wrong_key = ManagementKey::from_hex_by_length(&"11".repeat(24)).unwrap();
        let how = Provisioning {
            management_key: &wrong_key,
            ..how
        };
        let Err(refused) = provision(new_card(), &how, |_| Ok::<_, std::io::Error>(Vec::new()))
        else {
            panic!("a card came back though its management key was wrong");
        };
        assert!(
            matches!(
                refused,
                ProvisionError::Step {
                    step: "management key authentication",
                    ..
                }
            ),
            "{refused:?}"
        );
    }
}
