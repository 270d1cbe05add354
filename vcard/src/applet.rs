//! The PIV card application of the virtual card: one complete command in, data or a status word out.
//!
//! Chaining, GET RESPONSE and length handling live in the front end
//! ([`super::VirtualCard`]); this module only knows PIV (SP 800-73-4 Part 2 §3).

use std::collections::BTreeMap;

use pivtap_apdu::piv::objects::apt::ApplicationPropertyTemplate;
use pivtap_apdu::piv::objects::auth_template::{AuthTemplate, Field};
use pivtap_apdu::piv::objects::metadata::{ALGORITHM_PIN, KeyOrigin, Metadata};
use pivtap_apdu::piv::objects::unwrap_data_object;
use pivtap_apdu::piv::{
    Algorithm, Ins, KeyReference, ObjectTag, PIV_AID, Pin, Puk, commands as piv_commands,
};
use pivtap_apdu::{CommandApdu, StatusWord, tlv};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::keys::SlotKey;
use super::protection::{DataKey, KdfParams, SealedKey, Secret, WrappedKey, seals_slot};
use super::quirks::{Quirk, Quirks};
use pivtap_card::management_key::ManagementKey;

/// The PIN a new card ships with.
pub const DEFAULT_PIN: &[u8] = pivtap_card::factory::PIN.as_bytes();
/// The PUK a new card ships with.
pub const DEFAULT_PUK: &[u8] = pivtap_card::factory::PUK.as_bytes();

/// Tries for the PIN and for the PUK after a RESET, as on a new card.
pub const FACTORY_RETRIES: u8 = 3;

/// Largest data object the card stores (a certificate object is 1-3 KB).
pub const MAX_OBJECT_LEN: usize = 16 * 1024;

/// What GET VERSION (YubiKey extension `FD`) answers: the level of Yubico's
/// PIV extensions this card implements, GET SERIAL (from 5.0) and GET
/// METADATA (from 5.3), and none that came later (such as 5.7's key moves and
/// RSA-3072). libykpiv, the library under yubico-piv-tool and ykcs11, reads
/// the serial number with GET SERIAL only from 5.0 on; its 2.2 release only
/// warns about a card without GET VERSION, current ones refuse to use it. It
/// is not a YubiKey firmware version: the card has no other YubiKey feature.
pub const YUBICO_EXTENSIONS_VERSION: [u8; 3] = [5, 3, 0];

/// What a command produced: response data on success, or a status word.
pub type Outcome = Result<Vec<u8>, StatusWord>;

/// How the card knows a PIN or PUK.
pub enum ReferenceValue {
    /// The unpadded value itself (an unprotected card).
    Clear(Zeroizing<Vec<u8>>),
    /// Only the card's data key wrapped under it (a protected card): the
    /// value is right when it unwraps the data key.
    Wrapped(WrappedKey),
}

/// A PIN or PUK with its retry counter.
pub struct ReferenceData {
    /// The value, or what proves it.
    pub value: ReferenceValue,
    /// Tries left before it blocks.
    pub retries_left: u8,
    /// Tries after a successful verification or unblock.
    pub max_retries: u8,
}

/// Pads a PIN or PUK to eight bytes with `FF`, as on the wire.
pub(crate) fn pad(value: &[u8]) -> Zeroizing<[u8; 8]> {
    let mut padded = Zeroizing::new([0xFF_u8; 8]);
    let len = value.len().min(8);
    padded[..len].copy_from_slice(&value[..len]);
    padded
}

/// The value inside `FF` padding.
fn unpad(padded: &[u8]) -> &[u8] {
    let end = padded
        .iter()
        .position(|byte| *byte == 0xFF)
        .unwrap_or(padded.len());
    &padded[..end]
}

impl ReferenceData {
    /// The value padded to eight bytes with `FF`, as on the wire; `None` on
    /// a protected card, which does not know its PIN and PUK.
    #[must_use]
    pub fn padded(&self) -> Option<Zeroizing<[u8; 8]>> {
        match &self.value {
            ReferenceValue::Clear(value) => Some(pad(value)),
            ReferenceValue::Wrapped(_) => None,
        }
    }

    /// Whether the value is `candidate` (unpadded), without counting a try.
    fn is(&self, candidate: &[u8], kind: Secret) -> bool {
        match &self.value {
            ReferenceValue::Clear(value) => bool::from(value.as_slice().ct_eq(candidate)),
            ReferenceValue::Wrapped(wrapped) => wrapped.unwrap(candidate, kind).is_ok(),
        }
    }

    pub(crate) fn is_blocked(&self) -> bool {
        self.retries_left == 0
    }

    /// Checks a padded candidate (in constant time, or by unwrapping the
    /// data key), counting a failure down. Gives the data key on a protected card.
    fn check(
        &mut self,
        padded_candidate: &[u8],
        kind: Secret,
    ) -> Result<Option<DataKey>, StatusWord> {
        if self.is_blocked() {
            return Err(StatusWord::AuthenticationBlocked);
        }
        let right = match &self.value {
            ReferenceValue::Clear(value) => {
                bool::from(pad(value).as_slice().ct_eq(padded_candidate)).then_some(None)
            }
            ReferenceValue::Wrapped(wrapped) => {
                match wrapped.unwrap(unpad(padded_candidate), kind) {
                    Ok(data_key) => Some(Some(data_key)),
                    Err(super::protection::ProtectionError::WrongSecret) => None,
                    Err(error) => {
                        tracing::error!(%error, "the virtual card cannot derive its key");
                        return Err(StatusWord::MemoryFailure);
                    }
                }
            }
        };
        match right {
            Some(data_key) => {
                self.retries_left = self.max_retries;
                Ok(data_key)
            }
            None => {
                self.retries_left -= 1;
                Err(StatusWord::RetriesLeft(self.retries_left))
            }
        }
    }

    /// Sets a new (unpadded) value: in the clear, or on a protected card by
    /// wrapping `data_key` under it.
    fn set(
        &mut self,
        new: &[u8],
        kind: Secret,
        data_key: Option<&DataKey>,
    ) -> Result<(), StatusWord> {
        self.value = match (&self.value, data_key) {
            (ReferenceValue::Clear(_), _) => ReferenceValue::Clear(Zeroizing::new(new.to_vec())),
            (ReferenceValue::Wrapped(old), Some(data_key)) => ReferenceValue::Wrapped(
                WrappedKey::wrap(data_key, new, kind, old.kdf()).map_err(|error| {
                    tracing::error!(%error, "the virtual card cannot wrap its key");
                    StatusWord::MemoryFailure
                })?,
            ),
            (ReferenceValue::Wrapped(_), None) => return Err(StatusWord::ConditionsNotSatisfied),
        };
        Ok(())
    }
}

/// Everything the card keeps across power cycles.
pub struct PersistentState {
    /// Card serial number (GET SERIAL).
    pub serial: u32,
    /// A name for people, kept in the image.
    pub label: Option<String>,
    /// The PIV application PIN.
    pub pin: ReferenceData,
    /// The PIN unblocking key.
    pub puk: ReferenceData,
    /// The card management key (9B).
    pub management_key: ManagementKey,
    /// Private keys held in the clear, by slot: every key of an unprotected
    /// card; the card authentication key (9E) of a protected one.
    pub keys: BTreeMap<KeyReference, SlotKey>,
    /// Private keys sealed with the data key, by slot (protected cards only).
    pub sealed_keys: BTreeMap<KeyReference, SealedKey>,
    /// Data object contents (inside their wire wrapper) by tag.
    pub objects: BTreeMap<u32, Vec<u8>>,
    /// Third-party card behaviours this card takes on (none by default).
    pub quirks: Quirks,
}

/// Security state that a reset, a deselect or a power-off clears.
#[derive(Default)]
pub struct VolatileState {
    selected: bool,
    pin_verified: bool,
    /// The PIN was verified and no 9C signature has used it since ("PIN always").
    pin_fresh_for_signature: bool,
    management_authenticated: bool,
    /// The plain witness the card handed out, awaiting the host's decryption.
    pending_witness: Option<Zeroizing<Vec<u8>>>,
    /// The plain challenge of a one-way (external) management-key authentication.
    pending_challenge: Option<Zeroizing<Vec<u8>>>,
    /// A protected card's data key, from the last successful VERIFY.
    data_key: Option<DataKey>,
    /// A protected card's sealed keys, opened with `data_key` (zeroized on drop).
    unsealed: BTreeMap<KeyReference, SlotKey>,
}

impl VolatileState {
    /// Forgets the PIN verification, and with it a protected card's opened keys.
    fn forget_pin(&mut self) {
        self.pin_verified = false;
        self.pin_fresh_for_signature = false;
        self.data_key = None;
        self.unsealed.clear();
    }
}

/// Which interface the card is reached over; contactless applies SP 800-73-4's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interface {
    /// Contact (ISO 7816-3): every command is allowed.
    Contact,
    /// Contactless (ISO 14443) without secure messaging: only the CHUID, the
    /// card authentication key and certificate, and the Discovery object
    /// (SP 800-73-4 Part 1 §3.5, Part 2 Table 1).
    Contactless,
}

/// The PIV application: persistent state, volatile state and the interface.
pub struct PivApplet {
    /// What survives power-off.
    pub persistent: PersistentState,
    volatile: VolatileState,
    interface: Interface,
    /// Set when a command changed persistent state, so the front end saves it.
    dirty: bool,
}

impl PivApplet {
    /// An applet over the given persistent state, not yet selected.
    #[must_use]
    pub fn new(persistent: PersistentState, interface: Interface) -> Self {
        PivApplet {
            persistent,
            volatile: VolatileState::default(),
            interface,
            dirty: false,
        }
    }

    /// Clears the security state, as a card reset does; a card with
    /// [`Quirk::KeepPinOnReset`] keeps a verified PIN (and a protected
    /// card's opened keys) across it.
    pub fn reset(&mut self) {
        let before = std::mem::take(&mut self.volatile);
        if self.persistent.quirks.contains(Quirk::KeepPinOnReset) {
            self.volatile.pin_verified = before.pin_verified;
            self.volatile.data_key = before.data_key;
            self.volatile.unsealed = before.unsealed;
        }
    }

    /// Clears the security state, as losing power does (every card).
    pub fn power_off(&mut self) {
        self.volatile = VolatileState::default();
    }

    /// The answer to a wrong PIN or PUK: `63Cx`, or a plain `6300` on a card
    /// with [`Quirk::PlainWrongPinStatus`].
    fn wrong_secret<T>(&self, result: Result<T, StatusWord>) -> Result<T, StatusWord> {
        match result {
            Err(StatusWord::RetriesLeft(_))
                if self.persistent.quirks.contains(Quirk::PlainWrongPinStatus) =>
            {
                Err(StatusWord::VerificationFailed)
            }
            other => other,
        }
    }

    /// Switches the interface (a card moved from a contact to a contactless reader).
    pub fn set_interface(&mut self, interface: Interface) {
        self.interface = interface;
    }

    /// The interface the card answers on.
    #[must_use]
    pub fn interface(&self) -> Interface {
        self.interface
    }

    /// Whether the card is protected: its PIN and PUK are known only by the
    /// data key wrapped under them, and its private keys are sealed.
    #[must_use]
    pub fn is_protected(&self) -> bool {
        matches!(self.persistent.pin.value, ReferenceValue::Wrapped(_))
    }

    /// Whether a protected card's keys are open (the PIN was verified).
    #[must_use]
    pub fn is_unlocked(&self) -> bool {
        self.volatile.data_key.is_some()
    }

    /// The key in `slot`: a clear key, or an opened sealed one (`6982` while
    /// a protected card is locked), or `6A88` when the slot is empty.
    fn slot_key(&self, slot: KeyReference) -> Result<&SlotKey, StatusWord> {
        if let Some(key) = self.persistent.keys.get(&slot) {
            return Ok(key);
        }
        if self.persistent.sealed_keys.contains_key(&slot) {
            return self
                .volatile
                .unsealed
                .get(&slot)
                .ok_or(StatusWord::SecurityStatusNotSatisfied);
        }
        Err(StatusWord::ReferencedDataNotFound)
    }

    /// Whether persistent state changed since the last call; clears the flag.
    pub fn take_dirty(&mut self) -> bool {
        std::mem::take(&mut self.dirty)
    }

    /// Handles one complete (unchained) command.
    pub fn process(&mut self, command: &CommandApdu) -> Outcome {
        let ins = Ins::from(command.ins);
        if ins == Ins::Select {
            return self.select(command);
        }
        if ins == Ins::GetSerial {
            return Ok(self.persistent.serial.to_be_bytes().to_vec());
        }
        if ins == Ins::GetVersion {
            return Ok(YUBICO_EXTENSIONS_VERSION.to_vec());
        }
        if ins == Ins::GetMetadata {
            return self.metadata(command);
        }
        if !self.volatile.selected {
            return Err(StatusWord::InstructionNotSupported);
        }
        match ins {
            Ins::GetData => self.get_data(command),
            Ins::Verify => self.verify(command),
            Ins::ChangeReferenceData => self.change_reference_data(command),
            Ins::ResetRetryCounter => self.reset_retry_counter(command),
            Ins::GeneralAuthenticate => self.general_authenticate(command),
            Ins::PutData => self.put_data(command),
            Ins::GenerateAsymmetricKeyPair => self.generate_key_pair(command),
            Ins::ResetApplication => self.reset_application(command),
            _ => Err(StatusWord::InstructionNotSupported),
        }
    }

    fn require_contact(&self) -> Result<(), StatusWord> {
        match self.interface {
            Interface::Contact => Ok(()),
            Interface::Contactless => Err(StatusWord::SecurityStatusNotSatisfied),
        }
    }

    fn require_management_key(&self) -> Result<(), StatusWord> {
        self.require_contact()?;
        if self.volatile.management_authenticated {
            Ok(())
        } else {
            Err(StatusWord::SecurityStatusNotSatisfied)
        }
    }

    /// SELECT by the full or a right-truncated PIV AID (Part 2 §3.1.1).
    fn select(&mut self, command: &CommandApdu) -> Outcome {
        if command.p1 != 0x04 || !matches!(command.p2, 0x00 | 0x0C) {
            return Err(StatusWord::IncorrectP1P2);
        }
        let name = command.data();
        if name.len() < 5 || !PIV_AID.starts_with(name) {
            return Err(StatusWord::NotFound);
        }
        self.volatile.selected = true;
        if command.p2 == 0x0C {
            return Ok(Vec::new());
        }
        let template = ApplicationPropertyTemplate {
            aid: PIV_AID[5..].to_vec(),
            authority: Some(PIV_AID[..5].to_vec()),
            label: Some("pivtap virtual PIV card".to_owned()),
            url: None,
            algorithms: vec![
                Algorithm::Rsa2048,
                Algorithm::EccP256,
                Algorithm::EccP384,
                Algorithm::TripleDes,
                Algorithm::Aes128,
                Algorithm::Aes192,
                Algorithm::Aes256,
            ],
        };
        Ok(template.encode())
    }

    /// GET DATA (Part 2 §3.1.2): `5C` names the object.
    fn get_data(&mut self, command: &CommandApdu) -> Outcome {
        if (command.p1, command.p2) != (0x3F, 0xFF) {
            return Err(StatusWord::IncorrectP1P2);
        }
        let tag_bytes = tlv::expect(command.data(), piv_commands::TAG_LIST)
            .map_err(|_| StatusWord::IncorrectData)?;
        if tag_bytes.is_empty() || tag_bytes.len() > 3 {
            return Err(StatusWord::IncorrectData);
        }
        let tag = tag_bytes
            .iter()
            .fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
        let object = ObjectTag::from_tag(tag);
        if self.interface == Interface::Contactless && !object.contactless_readable() {
            return Err(StatusWord::SecurityStatusNotSatisfied);
        }
        if object.read_requires_pin() && !self.volatile.pin_verified {
            return Err(StatusWord::SecurityStatusNotSatisfied);
        }
        let content = self
            .persistent
            .objects
            .get(&tag)
            .ok_or(StatusWord::NotFound)?;
        Ok(tlv::encode(object.wire_tag(), content))
    }

    /// PUT DATA (Part 2 §3.3.1): needs the management key; empty content deletes.
    fn put_data(&mut self, command: &CommandApdu) -> Outcome {
        self.require_management_key()?;
        if (command.p1, command.p2) != (0x3F, 0xFF) {
            return Err(StatusWord::IncorrectP1P2);
        }
        let (object, content) = parse_put_data(command.data())?;
        if content.len() > MAX_OBJECT_LEN {
            return Err(StatusWord::NotEnoughMemory);
        }
        if content.is_empty() {
            self.persistent.objects.remove(&object.tag());
        } else {
            self.persistent
                .objects
                .insert(object.tag(), content.to_vec());
        }
        self.dirty = true;
        Ok(Vec::new())
    }

    /// VERIFY (Part 2 §3.2.1): check the PIN, query its status, or reset it (P1 `FF`).
    fn verify(&mut self, command: &CommandApdu) -> Outcome {
        self.require_contact()?;
        if command.p2 != u8::from(KeyReference::Pin) {
            return Err(StatusWord::ReferencedDataNotFound);
        }
        match (command.p1, command.data().len()) {
            (0xFF, 0) => {
                self.volatile.forget_pin();
                Ok(Vec::new())
            }
            (0x00, 0) => {
                if self.volatile.pin_verified {
                    Ok(Vec::new())
                } else if self.persistent.pin.is_blocked() {
                    Err(StatusWord::AuthenticationBlocked)
                } else {
                    Err(StatusWord::RetriesLeft(self.persistent.pin.retries_left))
                }
            }
            (0x00, 8) => {
                if Pin::from_padded(command.data()).is_err() {
                    return Err(StatusWord::IncorrectData);
                }
                self.volatile.forget_pin();
                let before = self.persistent.pin.retries_left;
                let result = self.persistent.pin.check(command.data(), Secret::Pin);
                self.dirty |= self.persistent.pin.retries_left != before;
                if let Some(data_key) = self.wrong_secret(result)? {
                    self.unlock(data_key)?;
                }
                self.volatile.pin_verified = true;
                self.volatile.pin_fresh_for_signature = true;
                Ok(Vec::new())
            }
            (0x00 | 0xFF, _) => Err(StatusWord::IncorrectLength),
            _ => Err(StatusWord::IncorrectP1P2),
        }
    }

    /// CHANGE REFERENCE DATA (Part 2 §3.2.2) for the PIN (`80`) or the PUK (`81`).
    fn change_reference_data(&mut self, command: &CommandApdu) -> Outcome {
        self.require_contact()?;
        if command.p1 != 0x00 {
            return Err(StatusWord::IncorrectP1P2);
        }
        let reference =
            KeyReference::try_from(command.p2).map_err(|_| StatusWord::ReferencedDataNotFound)?;
        let data = command.data();
        if data.len() != 16 {
            return Err(StatusWord::IncorrectLength);
        }
        let (current, new) = data.split_at(8);
        let new_value = match reference {
            KeyReference::Pin => {
                Pin::from_padded(new).map(|p| Zeroizing::new(p.as_bytes().to_vec()))
            }
            // The card image keeps the PUK as text, so this card takes only
            // printable ASCII PUKs (every PUK a person can type).
            KeyReference::Puk => Puk::from_padded(new)
                .ok()
                .filter(|p| p.as_bytes().iter().all(|b| (0x20..0x7F).contains(b)))
                .map(|p| Zeroizing::new(p.as_bytes().to_vec()))
                .ok_or(pivtap_apdu::piv::ReferenceDataError::BadPadding),
            _ => return Err(StatusWord::ReferencedDataNotFound),
        }
        .map_err(|_| StatusWord::IncorrectData)?;
        let (target, kind) = if reference == KeyReference::Pin {
            (&mut self.persistent.pin, Secret::Pin)
        } else {
            (&mut self.persistent.puk, Secret::Puk)
        };
        let before = target.retries_left;
        let result = target.check(current, kind);
        self.dirty |= target.retries_left != before;
        let data_key = self.wrong_secret(result)?;
        let target = if reference == KeyReference::Pin {
            &mut self.persistent.pin
        } else {
            &mut self.persistent.puk
        };
        target.set(&new_value, kind, data_key.as_ref())?;
        self.dirty = true;
        Ok(Vec::new())
    }

    /// RESET RETRY COUNTER (Part 2 §3.2.3): the PUK unblocks the PIN and sets a new one.
    fn reset_retry_counter(&mut self, command: &CommandApdu) -> Outcome {
        self.require_contact()?;
        if command.p1 != 0x00 {
            return Err(StatusWord::IncorrectP1P2);
        }
        if command.p2 != u8::from(KeyReference::Pin) {
            return Err(StatusWord::ReferencedDataNotFound);
        }
        let data = command.data();
        if data.len() != 16 {
            return Err(StatusWord::IncorrectLength);
        }
        let (puk, new_pin) = data.split_at(8);
        let new_pin = Pin::from_padded(new_pin).map_err(|_| StatusWord::IncorrectData)?;
        let before = self.persistent.puk.retries_left;
        let result = self.persistent.puk.check(puk, Secret::Puk);
        self.dirty |= self.persistent.puk.retries_left != before;
        let data_key = self.wrong_secret(result)?;
        self.persistent
            .pin
            .set(new_pin.as_bytes(), Secret::Pin, data_key.as_ref())?;
        self.persistent.pin.retries_left = self.persistent.pin.max_retries;
        self.dirty = true;
        Ok(Vec::new())
    }

    /// GENERAL AUTHENTICATE (Part 2 §3.2.4).
    fn general_authenticate(&mut self, command: &CommandApdu) -> Outcome {
        let algorithm = Algorithm::try_from(command.p1).map_err(|_| StatusWord::IncorrectP1P2)?;
        let reference =
            KeyReference::try_from(command.p2).map_err(|_| StatusWord::IncorrectP1P2)?;
        let template =
            AuthTemplate::parse(command.data()).map_err(|_| StatusWord::IncorrectData)?;
        if reference == KeyReference::ManagementKey {
            self.require_contact()?;
            return self.management_key_authenticate(algorithm, &template);
        }
        if !reference.is_asymmetric_slot() {
            return Err(StatusWord::IncorrectP1P2);
        }
        if reference != KeyReference::CardAuthentication {
            self.require_contact()?;
        }
        let key = self.slot_key(reference)?;
        if key.algorithm() != algorithm {
            return Err(StatusWord::IncorrectP1P2);
        }
        match reference {
            KeyReference::CardAuthentication => {}
            KeyReference::DigitalSignature => {
                if !self.volatile.pin_fresh_for_signature {
                    return Err(StatusWord::SecurityStatusNotSatisfied);
                }
            }
            _ => {
                if !self.volatile.pin_verified {
                    return Err(StatusWord::SecurityStatusNotSatisfied);
                }
            }
        }
        let output = match (
            &template.response,
            &template.challenge,
            &template.exponentiation,
        ) {
            (Field::Requested, Field::Value(input), Field::Absent) => if algorithm.is_rsa() {
                key.raw_rsa(input)
            } else {
                key.sign_prehash(input)
            }
            .map_err(|_| StatusWord::IncorrectData)?,
            (Field::Requested, Field::Absent, Field::Value(point)) if algorithm.is_ecc() => key
                .ecdh(point)
                .map_err(|_| StatusWord::IncorrectData)?
                .to_vec(),
            _ => return Err(StatusWord::IncorrectData),
        };
        if reference == KeyReference::DigitalSignature {
            self.volatile.pin_fresh_for_signature = false;
        }
        Ok(AuthTemplate {
            response: Field::value(output),
            ..AuthTemplate::default()
        }
        .encode()
        .to_vec())
    }

    /// Management key authentication (Part 2 Appendix A.1): mutual (witness,
    /// then witness + challenge) or one-way (challenge, then response).
    fn management_key_authenticate(
        &mut self,
        algorithm: Algorithm,
        template: &AuthTemplate,
    ) -> Outcome {
        let key = &self.persistent.management_key;
        if key.algorithm() != algorithm {
            return Err(StatusWord::IncorrectP1P2);
        }
        let block_len = key.block_len();
        let volatile = &mut self.volatile;
        let reply = |field: AuthTemplate| Ok(field.encode().to_vec());
        match (&template.witness, &template.challenge, &template.response) {
            (Field::Requested, Field::Absent, Field::Absent) => {
                volatile.management_authenticated = false;
                let mut witness = Zeroizing::new(vec![0u8; block_len]);
                rand::fill(witness.as_mut_slice());
                let encrypted = key
                    .encrypt_block(&witness)
                    .map_err(|_| StatusWord::IncorrectData)?;
                volatile.pending_witness = Some(witness);
                reply(AuthTemplate {
                    witness: Field::value(encrypted.to_vec()),
                    ..AuthTemplate::default()
                })
            }
            (Field::Value(_), Field::Value(_), Field::Requested)
                if self.persistent.quirks.contains(Quirk::StrictTemplate) =>
            {
                volatile.pending_witness = None;
                volatile.management_authenticated = false;
                Err(StatusWord::IncorrectData)
            }
            (
                Field::Value(decrypted),
                Field::Value(challenge),
                Field::Requested | Field::Absent,
            ) => {
                let expected = volatile
                    .pending_witness
                    .take()
                    .ok_or(StatusWord::ConditionsNotSatisfied)?;
                if challenge.len() != block_len
                    || !bool::from(expected.as_slice().ct_eq(decrypted.as_slice()))
                {
                    volatile.management_authenticated = false;
                    return Err(StatusWord::SecurityStatusNotSatisfied);
                }
                let encrypted = key
                    .encrypt_block(challenge)
                    .map_err(|_| StatusWord::IncorrectData)?;
                volatile.management_authenticated = true;
                reply(AuthTemplate {
                    response: Field::value(encrypted.to_vec()),
                    ..AuthTemplate::default()
                })
            }
            (Field::Absent, Field::Requested, Field::Absent) => {
                volatile.management_authenticated = false;
                let mut challenge = Zeroizing::new(vec![0u8; block_len]);
                rand::fill(challenge.as_mut_slice());
                let reply_challenge = challenge.to_vec();
                volatile.pending_challenge = Some(challenge);
                reply(AuthTemplate {
                    challenge: Field::value(reply_challenge),
                    ..AuthTemplate::default()
                })
            }
            (Field::Absent, Field::Absent, Field::Value(response)) => {
                let challenge = volatile
                    .pending_challenge
                    .take()
                    .ok_or(StatusWord::ConditionsNotSatisfied)?;
                let expected = key
                    .encrypt_block(&challenge)
                    .map_err(|_| StatusWord::IncorrectData)?;
                if bool::from(expected.as_slice().ct_eq(response.as_slice())) {
                    volatile.management_authenticated = true;
                    Ok(Vec::new())
                } else {
                    volatile.management_authenticated = false;
                    Err(StatusWord::SecurityStatusNotSatisfied)
                }
            }
            _ => Err(StatusWord::IncorrectData),
        }
    }

    /// GET METADATA (YubiKey extension `F7`), so tools can read PUK retries
    /// and key algorithms without spending a try.
    fn metadata(&self, command: &CommandApdu) -> Outcome {
        let reference =
            KeyReference::try_from(command.p2).map_err(|_| StatusWord::ReferencedDataNotFound)?;
        let metadata = match reference {
            KeyReference::Pin | KeyReference::Puk => {
                let (data, default, kind) = if reference == KeyReference::Pin {
                    (&self.persistent.pin, DEFAULT_PIN, Secret::Pin)
                } else {
                    (&self.persistent.puk, DEFAULT_PUK, Secret::Puk)
                };
                Metadata {
                    algorithm: Some(ALGORITHM_PIN),
                    policy: Some([0, 0]),
                    is_default: Some(data.is(default, kind)),
                    retries: Some((data.max_retries, data.retries_left)),
                    ..Metadata::default()
                }
            }
            KeyReference::ManagementKey => {
                let key = &self.persistent.management_key;
                Metadata {
                    algorithm: Some(u8::from(key.algorithm())),
                    policy: Some([0, 1]),
                    is_default: Some(key.ct_eq(&ManagementKey::default_key())),
                    ..Metadata::default()
                }
            }
            slot if slot.is_asymmetric_slot() => {
                let (algorithm, public_key) = match self.slot_key(slot) {
                    Ok(key) => (key.algorithm(), Some(key.public_key().encode())),
                    // A locked protected card knows the algorithm, not the key.
                    Err(StatusWord::SecurityStatusNotSatisfied) => (
                        self.persistent
                            .sealed_keys
                            .get(&slot)
                            .ok_or(StatusWord::ReferencedDataNotFound)?
                            .algorithm(),
                        None,
                    ),
                    Err(status) => return Err(status),
                };
                let inner = public_key
                    .as_deref()
                    .map(|encoded| tlv::expect(encoded, 0x7F49).map(<[u8]>::to_vec))
                    .transpose()
                    .map_err(|_| StatusWord::NoPreciseDiagnosis)?;
                let pin_policy = if slot == KeyReference::DigitalSignature {
                    3
                } else if slot == KeyReference::CardAuthentication {
                    1
                } else {
                    2
                };
                Metadata {
                    algorithm: Some(u8::from(algorithm)),
                    policy: Some([pin_policy, 1]),
                    // The card has no key import: every key it holds came
                    // from GENERATE ASYMMETRIC KEY PAIR.
                    origin: Some(KeyOrigin::Generated),
                    public_key: inner,
                    ..Metadata::default()
                }
            }
            _ => return Err(StatusWord::ReferencedDataNotFound),
        };
        Ok(metadata.encode())
    }

    /// GENERATE ASYMMETRIC KEY PAIR (Part 2 §3.3.2): needs the management key;
    /// answers with the public key.
    fn generate_key_pair(&mut self, command: &CommandApdu) -> Outcome {
        self.require_management_key()?;
        let slot = KeyReference::try_from(command.p2).map_err(|_| StatusWord::IncorrectP1P2)?;
        if command.p1 != 0x00 || !slot.is_asymmetric_slot() {
            return Err(StatusWord::IncorrectP1P2);
        }
        let control = tlv::expect(command.data(), piv_commands::TAG_CONTROL_REFERENCE)
            .map_err(|_| StatusWord::IncorrectData)?;
        let elements = tlv::parse_all(control).map_err(|_| StatusWord::IncorrectData)?;
        let mechanism = match tlv::find(&elements, piv_commands::TAG_MECHANISM) {
            Some([id]) => *id,
            _ => return Err(StatusWord::IncorrectData),
        };
        let algorithm = Algorithm::try_from(mechanism).map_err(|_| StatusWord::IncorrectData)?;
        let seal = self.is_protected() && seals_slot(slot);
        if seal && self.volatile.data_key.is_none() {
            return Err(StatusWord::SecurityStatusNotSatisfied);
        }
        let key = SlotKey::generate(algorithm).map_err(|_| StatusWord::IncorrectData)?;
        let public_key = key.public_key().encode();
        match self.volatile.data_key.as_ref().filter(|_| seal) {
            Some(data_key) => {
                let sealed = SealedKey::seal(data_key, slot, &key).map_err(|error| {
                    tracing::error!(%error, "the virtual card cannot seal a key");
                    StatusWord::MemoryFailure
                })?;
                self.persistent.keys.remove(&slot);
                self.persistent.sealed_keys.insert(slot, sealed);
                self.volatile.unsealed.insert(slot, key);
            }
            None => {
                self.persistent.sealed_keys.remove(&slot);
                self.volatile.unsealed.remove(&slot);
                self.persistent.keys.insert(slot, key);
            }
        }
        self.dirty = true;
        Ok(public_key)
    }
}

impl PivApplet {
    /// Opens a protected card's sealed keys with the data key a VERIFY gave.
    fn unlock(&mut self, data_key: DataKey) -> Result<(), StatusWord> {
        let mut unsealed = BTreeMap::new();
        for (slot, sealed) in &self.persistent.sealed_keys {
            let key = sealed.unseal(&data_key, *slot).map_err(|error| {
                tracing::error!(%error, "the virtual card cannot open a sealed key");
                StatusWord::NoPreciseDiagnosis
            })?;
            unsealed.insert(*slot, key);
        }
        self.volatile.unsealed = unsealed;
        self.volatile.data_key = Some(data_key);
        Ok(())
    }

    /// RESET (YubiKey extension `FB`): returns the PIV application to its
    /// factory state, and only once both the PIN and the PUK are blocked
    /// (else `6985`, conditions of use not satisfied), as YubiKeys do. Every
    /// key, certificate and data object (CHUID included) is wiped; the PIN,
    /// PUK and management key return to their defaults with
    /// [`FACTORY_RETRIES`] tries each. The serial number and label stay.
    fn reset_application(&mut self, command: &CommandApdu) -> Outcome {
        self.require_contact()?;
        if (command.p1, command.p2) != (0x00, 0x00) {
            return Err(StatusWord::IncorrectP1P2);
        }
        if !(self.persistent.pin.is_blocked() && self.persistent.puk.is_blocked()) {
            return Err(StatusWord::ConditionsNotSatisfied);
        }
        let protection = match &self.persistent.pin.value {
            ReferenceValue::Wrapped(wrapped) => Some(wrapped.kdf()),
            ReferenceValue::Clear(_) => None,
        };
        let (pin, puk) = factory_reference_data(protection).map_err(|error| {
            tracing::error!(%error, "the virtual card cannot wrap its new key");
            StatusWord::MemoryFailure
        })?;
        self.persistent.pin = pin;
        self.persistent.puk = puk;
        self.persistent.management_key = ManagementKey::default_key();
        self.persistent.keys.clear();
        self.persistent.sealed_keys.clear();
        self.persistent.objects.clear();
        self.volatile = VolatileState {
            selected: true,
            ..VolatileState::default()
        };
        self.dirty = true;
        Ok(Vec::new())
    }
}

/// The factory PIN and PUK with [`FACTORY_RETRIES`] tries: in the clear,
/// or, for a protected card, as a fresh data key wrapped under each.
///
/// # Errors
/// The errors of [`WrappedKey::wrap`].
pub fn factory_reference_data(
    protection: Option<KdfParams>,
) -> Result<(ReferenceData, ReferenceData), super::protection::ProtectionError> {
    let (pin, puk) = match protection {
        None => (
            ReferenceValue::Clear(Zeroizing::new(DEFAULT_PIN.to_vec())),
            ReferenceValue::Clear(Zeroizing::new(DEFAULT_PUK.to_vec())),
        ),
        Some(kdf) => {
            let data_key = DataKey::generate();
            (
                ReferenceValue::Wrapped(WrappedKey::wrap(
                    &data_key,
                    DEFAULT_PIN,
                    Secret::Pin,
                    kdf,
                )?),
                ReferenceValue::Wrapped(WrappedKey::wrap(
                    &data_key,
                    DEFAULT_PUK,
                    Secret::Puk,
                    kdf,
                )?),
            )
        }
    };
    let counted = |value| ReferenceData {
        value,
        retries_left: FACTORY_RETRIES,
        max_retries: FACTORY_RETRIES,
    };
    Ok((counted(pin), counted(puk)))
}

/// Splits PUT DATA's data into the object and its content.
fn parse_put_data(data: &[u8]) -> Result<(ObjectTag, &[u8]), StatusWord> {
    let (first, rest) = tlv::read(data).map_err(|_| StatusWord::IncorrectData)?;
    match first.tag {
        // Discovery and BIT group are written whole, under their own tag.
        0x7E | 0x7F61 if rest.is_empty() => Ok((ObjectTag::from_tag(first.tag), first.value)),
        piv_commands::TAG_LIST => {
            if first.value.is_empty() || first.value.len() > 3 {
                return Err(StatusWord::IncorrectData);
            }
            let tag = first
                .value
                .iter()
                .fold(0u32, |acc, b| (acc << 8) | u32::from(*b));
            let content = unwrap_data_object(rest).map_err(|_| StatusWord::IncorrectData)?;
            Ok((ObjectTag::from_tag(tag), content))
        }
        _ => Err(StatusWord::IncorrectData),
    }
}
