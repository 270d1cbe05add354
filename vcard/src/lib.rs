//! The virtual PIV card, a full card in software that answers real APDUs, and its vpcd bridge to PC/SC.
//!
//! [`VirtualCard::transmit`] takes the raw bytes a reader would pass to a
//! card and returns the raw answer. The front end here handles what sits
//! below the PIV application: class checks, extended-length refusal (like
//! many NFC readers), command chaining and `61xx` / GET RESPONSE; the PIV
//! application itself is [`applet::PivApplet`]. A card opened from an image
//! file writes its state back, atomically, after every change.
//!
//! A card may be protected ([`VirtualCard::blank_protected`]): its private
//! keys are sealed under a data key that only its PIN or PUK unwraps; see
//! [`protection`].
//!
//! [`vpcd`] attaches a card to a PC/SC reader of the vsmartcard vpcd driver,
//! so programs that speak PC/SC see it as a real card.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod applet;
pub mod image;
pub mod keys;
pub mod protection;
pub mod provision;
pub mod quirks;
pub mod vpcd;

#[cfg(test)]
mod protected_tests;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use pivtap_apdu::command::{CLA_CHAINING, EXTENDED_MAX_NE, SHORT_MAX_NE};
use pivtap_apdu::piv::Ins;
use pivtap_apdu::{CommandApdu, ResponseApdu, StatusWord};

pub use applet::Interface;
use applet::{Outcome, PersistentState, PivApplet, ReferenceData, ReferenceValue, pad};
use image::{CardImage, CardSettings, DataObject, KeyEntry, ReferenceDataState, StoredSecret};
use pivtap_apdu::piv::{ObjectTag, Pin, Puk};
use pivtap_card::transport::{CardBackend, CardTransaction, LinkCapabilities, TransportError};
use protection::{DataKey, KdfParams, Secret, WrappedKey};
pub use quirks::{Quirk, Quirks};
use std::collections::BTreeMap;

use pivtap_card::management_key::ManagementKey;

/// Largest command a chain may build up (a certificate object is a few KB).
const MAX_CHAINED_DATA: usize = 64 * 1024;

/// How the card presents itself to readers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CardOptions {
    /// Whether extended-length APDUs are accepted; when false they are
    /// answered with `6700`, as many NFC readers and older cards do.
    pub extended_length: bool,
    /// Contact, or contactless with SP 800-73-4's contactless restrictions.
    pub interface: Interface,
}

impl Default for CardOptions {
    fn default() -> Self {
        CardOptions {
            extended_length: true,
            interface: Interface::Contact,
        }
    }
}

/// Errors of opening, building or saving a virtual card.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VirtualCardError {
    /// The image file could not be read, parsed or written.
    #[error(transparent)]
    Image(#[from] image::ImageError),
    /// A key in the image could not be loaded.
    #[error("the key in slot {slot} cannot be used")]
    Key {
        /// The slot.
        slot: String,
        /// Why.
        #[source]
        source: keys::KeyError,
    },
    /// The management key in the image is invalid.
    #[error("invalid management key")]
    ManagementKey(#[from] pivtap_card::management_key::ManagementKeyError),
    /// A protected card's data key could not be wrapped.
    #[error("cannot protect the card")]
    Protection(#[from] protection::ProtectionError),
}

/// What a new card starts with.
pub struct NewCard {
    /// The PIN.
    pub pin: Pin,
    /// The PUK.
    pub puk: Puk,
    /// Tries for the PIN and for the PUK (1 to 15).
    pub retries: u8,
    /// The card management key.
    pub management_key: ManagementKey,
    /// The serial number.
    pub serial: u32,
    /// A name for people.
    pub label: Option<String>,
    /// How the card presents itself.
    pub options: CardOptions,
}

impl NewCard {
    /// A card in factory state ([`pivtap_card::factory`]): PIN `123456`, PUK
    /// `12345678`, three tries each, the well-known default management key, a random serial.
    #[must_use]
    pub fn factory(options: CardOptions) -> Self {
        NewCard {
            pin: pivtap_card::factory::pin(),
            puk: pivtap_card::factory::puk(),
            retries: applet::FACTORY_RETRIES,
            management_key: pivtap_card::factory::management_key(),
            serial: 10_000_000 + rand::random_range(0..90_000_000),
            label: None,
            options,
        }
    }
}

/// A command chain being received (ISO 7816-4 §5.4.1).
struct Chain {
    header: [u8; 3],
    data: zeroize::Zeroizing<Vec<u8>>,
}

/// Response bytes waiting for GET RESPONSE.
struct PendingResponse {
    data: Vec<u8>,
    offset: usize,
}

/// A virtual PIV card.
pub struct VirtualCard {
    applet: PivApplet,
    /// The options kept in the image.
    options: CardOptions,
    /// Options for this session only (a reader that refuses extended length,
    /// a tap on a contactless reader), not saved.
    presentation: Option<CardOptions>,
    chain: Option<Chain>,
    pending: Option<PendingResponse>,
    storage: Option<PathBuf>,
}

impl VirtualCard {
    /// A card over an applet.
    #[must_use]
    pub fn new(applet: PivApplet, options: CardOptions) -> Self {
        VirtualCard {
            applet,
            options,
            presentation: None,
            chain: None,
            pending: None,
            storage: None,
        }
    }

    /// A card with no keys and no data objects.
    #[must_use]
    pub fn blank(new: NewCard) -> Self {
        let pin = ReferenceValue::Clear(zeroize::Zeroizing::new(new.pin.as_bytes().to_vec()));
        let puk = ReferenceValue::Clear(zeroize::Zeroizing::new(new.puk.as_bytes().to_vec()));
        VirtualCard::blank_with(new, pin, puk)
    }

    /// A protected card with no keys and no data objects: a fresh data key
    /// wrapped under the PIN and under the PUK with Argon2id (`kdf`;
    /// [`KdfParams::RECOMMENDED`] outside tests). Keys it generates are sealed
    /// with the data key, and usable only after a VERIFY.
    ///
    /// # Errors
    /// [`VirtualCardError::Protection`] if Argon2id fails.
    pub fn blank_protected(new: NewCard, kdf: KdfParams) -> Result<Self, VirtualCardError> {
        let data_key = DataKey::generate();
        let pin = ReferenceValue::Wrapped(WrappedKey::wrap(
            &data_key,
            new.pin.as_bytes(),
            Secret::Pin,
            kdf,
        )?);
        let puk = ReferenceValue::Wrapped(WrappedKey::wrap(
            &data_key,
            new.puk.as_bytes(),
            Secret::Puk,
            kdf,
        )?);
        Ok(VirtualCard::blank_with(new, pin, puk))
    }

    fn blank_with(new: NewCard, pin: ReferenceValue, puk: ReferenceValue) -> Self {
        let retries = new.retries.clamp(1, 15);
        let reference = |value| ReferenceData {
            value,
            retries_left: retries,
            max_retries: retries,
        };
        let persistent = PersistentState {
            serial: new.serial,
            label: new.label,
            pin: reference(pin),
            puk: reference(puk),
            management_key: new.management_key,
            keys: BTreeMap::new(),
            sealed_keys: BTreeMap::new(),
            objects: BTreeMap::new(),
            quirks: Quirks::NONE,
        };
        VirtualCard::new(
            PivApplet::new(persistent, new.options.interface),
            new.options,
        )
    }

    /// How the card presents itself now: the session's options if set, else its own.
    #[must_use]
    pub fn options(&self) -> CardOptions {
        self.presentation.unwrap_or(self.options)
    }

    /// Changes the card's own options (saved with the card); takes effect for
    /// the next command unless a session presentation overrides them.
    pub fn set_options(&mut self, options: CardOptions) {
        self.options = options;
        self.applet.set_interface(self.options().interface);
    }

    /// Presents the card differently for this session only (not saved), as
    /// when a card is held to a contactless reader or one without extended length.
    pub fn present_as(&mut self, options: CardOptions) {
        self.presentation = Some(options);
        self.applet.set_interface(options.interface);
    }

    /// Sets the card's label (a note for people, never reported by the
    /// card); written with the next save.
    pub fn set_label(&mut self, label: Option<String>) {
        self.applet.persistent.label = label;
    }

    /// The PIV application, for inspection.
    #[must_use]
    pub fn applet(&self) -> &PivApplet {
        &self.applet
    }

    /// The file the card writes itself back to, if any.
    #[must_use]
    pub fn storage(&self) -> Option<&Path> {
        self.storage.as_deref()
    }

    /// A warm reset: clears selection, PIN and management-key state, any
    /// chain and any pending response (a card with
    /// [`Quirk::KeepPinOnReset`] keeps a verified PIN).
    pub fn reset(&mut self) {
        self.applet.reset();
        self.chain = None;
        self.pending = None;
    }

    /// A power-off: clears everything [`Self::reset`] does, and the PIN
    /// state whatever the card's quirks.
    pub fn power_off(&mut self) {
        self.applet.power_off();
        self.chain = None;
        self.pending = None;
    }

    /// The third-party behaviours the card takes on.
    #[must_use]
    pub fn quirks(&self) -> Quirks {
        self.applet.persistent.quirks
    }

    /// Sets the third-party behaviours the card takes on (saved with the card).
    pub fn set_quirks(&mut self, quirks: Quirks) {
        self.applet.persistent.quirks = quirks;
    }

    /// Processes one raw command APDU and returns the raw response. Never
    /// panics: malformed input gets a status word.
    pub fn transmit(&mut self, raw: &[u8]) -> Vec<u8> {
        self.answer(raw).to_bytes()
    }

    fn answer(&mut self, raw: &[u8]) -> ResponseApdu {
        let Ok(command) = CommandApdu::from_bytes(raw) else {
            self.pending = None;
            return ResponseApdu::status_only(StatusWord::IncorrectLength);
        };
        if command.cla & !CLA_CHAINING != 0 {
            self.pending = None;
            let status = if command.cla & 0x0C != 0 {
                StatusWord::SecureMessagingNotSupported
            } else {
                StatusWord::ClassNotSupported
            };
            return ResponseApdu::status_only(status);
        }
        if !self.options().extended_length && is_extended(raw) {
            self.pending = None;
            return ResponseApdu::status_only(StatusWord::IncorrectLength);
        }
        if Ins::from(command.ins) == Ins::GetResponse && !command.is_chained() {
            return self.get_response(&command);
        }
        self.pending = None;
        let command = match self.collect_chain(command) {
            Ok(Some(whole)) => whole,
            Ok(None) => return ResponseApdu::status_only(StatusWord::Success),
            Err(status) => return ResponseApdu::status_only(status),
        };
        let outcome = self.applet.process(&command);
        let outcome = self.persist_if_changed(outcome);
        self.respond(&command, outcome, is_extended(raw))
    }

    /// Adds a chained command to the buffer; returns the whole command when
    /// the chain ends. A command with another header abandons the chain.
    fn collect_chain(&mut self, command: CommandApdu) -> Result<Option<CommandApdu>, StatusWord> {
        let header = [command.ins, command.p1, command.p2];
        let continuing = self.chain.take().filter(|chain| chain.header == header);
        if command.is_chained() {
            let mut chain = continuing.unwrap_or(Chain {
                header,
                data: zeroize::Zeroizing::new(Vec::new()),
            });
            chain.data.extend_from_slice(command.data());
            if chain.data.len() > MAX_CHAINED_DATA {
                return Err(StatusWord::IncorrectLength);
            }
            self.chain = Some(chain);
            return Ok(None);
        }
        let Some(mut chain) = continuing else {
            return Ok(Some(command));
        };
        chain.data.extend_from_slice(command.data());
        if chain.data.len() > MAX_CHAINED_DATA {
            return Err(StatusWord::IncorrectLength);
        }
        Ok(Some(
            CommandApdu::new(command.cla, command.ins, command.p1, command.p2)
                .with_data(chain.data.to_vec())
                .with_ne(command.ne()),
        ))
    }

    fn persist_if_changed(&mut self, outcome: Outcome) -> Outcome {
        if !self.applet.take_dirty() {
            return outcome;
        }
        let Some(path) = self.storage.clone() else {
            return outcome;
        };
        match self.save(&path) {
            Ok(()) => outcome,
            Err(error) => {
                tracing::error!(path = %path.display(), %error, "virtual card could not save its state");
                Err(StatusWord::MemoryFailure)
            }
        }
    }

    /// Sends as much of the answer as Ne allows; the rest waits for GET RESPONSE.
    fn respond(&mut self, command: &CommandApdu, outcome: Outcome, extended: bool) -> ResponseApdu {
        let data = match outcome {
            Ok(data) => data,
            Err(status) => return ResponseApdu::status_only(status),
        };
        // Without an Le field the card answers as T=1 cards do (and as PIV
        // tools such as yubico-piv-tool, which never send Le, expect): up to
        // the largest Ne of the command's length form, the rest by `61xx`.
        let ne = match command.ne() {
            0 if extended => EXTENDED_MAX_NE,
            0 => SHORT_MAX_NE,
            ne => ne,
        };
        if data.len() <= ne {
            return ResponseApdu::new(data, StatusWord::Success);
        }
        // T=0 style: a short case 2 command with too small an Le learns the exact length.
        if !extended && command.data().is_empty() && ne > 0 && data.len() < SHORT_MAX_NE {
            return ResponseApdu::status_only(StatusWord::WrongLength(data.len() as u8));
        }
        self.pending = Some(PendingResponse { data, offset: 0 });
        self.next_chunk(ne)
    }

    fn get_response(&mut self, command: &CommandApdu) -> ResponseApdu {
        if (command.p1, command.p2) != (0, 0) {
            return ResponseApdu::status_only(StatusWord::IncorrectP1P2);
        }
        if self.pending.is_none() {
            return ResponseApdu::status_only(StatusWord::ConditionsNotSatisfied);
        }
        self.next_chunk(command.ne().max(1))
    }

    fn next_chunk(&mut self, ne: usize) -> ResponseApdu {
        let Some(pending) = self.pending.as_mut() else {
            return ResponseApdu::status_only(StatusWord::ConditionsNotSatisfied);
        };
        let end = (pending.offset + ne).min(pending.data.len());
        let chunk = pending.data[pending.offset..end].to_vec();
        pending.offset = end;
        let remaining = pending.data.len() - end;
        if remaining == 0 {
            self.pending = None;
            ResponseApdu::new(chunk, StatusWord::Success)
        } else {
            ResponseApdu::new(
                chunk,
                StatusWord::MoreData(remaining.min(SHORT_MAX_NE) as u8),
            )
        }
    }
}

impl VirtualCard {
    /// Builds a card from an image.
    ///
    /// # Errors
    /// [`VirtualCardError::Key`] when a private key cannot be read.
    pub fn from_image(image: &CardImage) -> Result<Self, VirtualCardError> {
        image.validate()?;
        let mut keys = BTreeMap::new();
        let mut sealed_keys = BTreeMap::new();
        for entry in &image.keys {
            if let Some(sealed) = entry.sealed_key() {
                sealed_keys.insert(entry.slot(), sealed.clone());
                continue;
            }
            let key = entry.slot_key().map_err(|source| VirtualCardError::Key {
                slot: entry.slot().to_string(),
                source,
            })?;
            keys.insert(entry.slot(), key);
        }
        let reference = |value: ReferenceValue, retries_left, max_retries| ReferenceData {
            value,
            retries_left,
            max_retries,
        };
        let stored = |value: Option<&[u8]>, wrapped: Option<&WrappedKey>| match wrapped {
            Some(wrapped) => ReferenceValue::Wrapped(wrapped.clone()),
            None => {
                ReferenceValue::Clear(zeroize::Zeroizing::new(value.unwrap_or_default().to_vec()))
            }
        };
        let persistent = PersistentState {
            serial: image.card.serial,
            label: image.card.label.clone(),
            pin: reference(
                stored(
                    image.pin.value.clear().map(Pin::as_bytes),
                    image.pin.value.wrapped(),
                ),
                image.pin.retries_left,
                image.pin.max_retries,
            ),
            puk: reference(
                stored(
                    image.puk.value.clear().map(Puk::as_bytes),
                    image.puk.value.wrapped(),
                ),
                image.puk.retries_left,
                image.puk.max_retries,
            ),
            management_key: image.management_key.clone(),
            keys,
            sealed_keys,
            objects: image
                .objects
                .iter()
                .map(|o| (o.tag.tag(), o.data.clone()))
                .collect(),
            quirks: image.card.quirks,
        };
        let options = CardOptions {
            extended_length: image.card.extended_length,
            interface: if image.card.contactless {
                Interface::Contactless
            } else {
                Interface::Contact
            },
        };
        Ok(VirtualCard::new(
            PivApplet::new(persistent, options.interface),
            options,
        ))
    }

    /// The card's state as an image.
    ///
    /// # Errors
    /// [`VirtualCardError::Key`] when a key cannot be encoded, or
    /// [`VirtualCardError::Image`] when the PIN or PUK is not storable.
    pub fn to_image(&self) -> Result<CardImage, VirtualCardError> {
        let state = &self.applet.persistent;
        let mut keys = BTreeMap::new();
        for (slot, key) in &state.keys {
            let entry = KeyEntry::new(*slot, key).map_err(|source| VirtualCardError::Key {
                slot: slot.to_string(),
                source,
            })?;
            keys.insert(*slot, entry);
        }
        for (slot, sealed) in &state.sealed_keys {
            keys.insert(*slot, KeyEntry::sealed(*slot, sealed.clone()));
        }
        let keys = keys.into_values().collect();
        Ok(CardImage {
            card: CardSettings {
                serial: state.serial,
                label: state.label.clone(),
                extended_length: self.options.extended_length,
                contactless: self.options.interface == Interface::Contactless,
                quirks: state.quirks,
            },
            pin: ReferenceDataState {
                value: match &state.pin.value {
                    ReferenceValue::Wrapped(wrapped) => StoredSecret::Wrapped(wrapped.clone()),
                    ReferenceValue::Clear(value) => StoredSecret::Clear(
                        Pin::from_padded(&pad(value)[..]).map_err(image::ImageError::InvalidPin)?,
                    ),
                },
                retries_left: state.pin.retries_left,
                max_retries: state.pin.max_retries,
            },
            puk: ReferenceDataState {
                value: match &state.puk.value {
                    ReferenceValue::Wrapped(wrapped) => StoredSecret::Wrapped(wrapped.clone()),
                    ReferenceValue::Clear(value) => StoredSecret::Clear(
                        Puk::from_padded(&pad(value)[..]).map_err(image::ImageError::InvalidPuk)?,
                    ),
                },
                retries_left: state.puk.retries_left,
                max_retries: state.puk.max_retries,
            },
            management_key: state.management_key.clone(),
            keys,
            objects: state
                .objects
                .iter()
                .map(|(tag, data)| DataObject {
                    tag: ObjectTag::from_tag(*tag),
                    data: data.clone(),
                })
                .collect(),
        })
    }

    /// Opens a card image; the card saves every change back to `path`.
    ///
    /// # Errors
    /// [`VirtualCardError::Image`] when the file cannot be read or is invalid.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, VirtualCardError> {
        let path = path.as_ref();
        let mut card = VirtualCard::from_image(&CardImage::load(path)?)?;
        card.storage = Some(path.to_owned());
        Ok(card)
    }

    /// Saves the card to `path` (atomically) and keeps saving every change there.
    ///
    /// # Errors
    /// [`VirtualCardError::Image`] when the file cannot be written.
    pub fn save_as(&mut self, path: impl AsRef<Path>) -> Result<(), VirtualCardError> {
        let path = path.as_ref();
        self.save(path)?;
        self.storage = Some(path.to_owned());
        Ok(())
    }

    fn save(&self, path: &Path) -> Result<(), VirtualCardError> {
        self.to_image()?.save(path)?;
        Ok(())
    }
}

/// Whether raw command bytes use extended length fields: a body that starts
/// with `00` and is longer than one byte (a short Lc is never zero).
fn is_extended(raw: &[u8]) -> bool {
    raw.len() > 5 && raw[4] == 0
}

/// The virtual card as a [`CardBackend`], shared so that a test or a reader
/// simulation can hold it too.
#[derive(Clone)]
pub struct VirtualCardBackend {
    card: Arc<Mutex<VirtualCard>>,
    name: String,
}

impl VirtualCardBackend {
    /// Wraps a card; `name` is what [`CardBackend::name`] reports.
    #[must_use]
    pub fn new(card: VirtualCard, name: impl Into<String>) -> Self {
        VirtualCardBackend {
            card: Arc::new(Mutex::new(card)),
            name: name.into(),
        }
    }

    /// Takes the card back, when no clone of this backend is left.
    ///
    /// # Errors
    /// Gives the backend back when another clone still shares the card.
    pub fn into_card(self) -> Result<VirtualCard, Self> {
        let name = self.name;
        match Arc::try_unwrap(self.card) {
            Ok(mutex) => Ok(mutex.into_inner().unwrap_or_else(PoisonError::into_inner)),
            Err(card) => Err(VirtualCardBackend { card, name }),
        }
    }

    /// Exclusive access to the card (for inspection, reset or saving).
    pub fn card(&self) -> MutexGuard<'_, VirtualCard> {
        self.card.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct VirtualTransaction<'a> {
    card: MutexGuard<'a, VirtualCard>,
}

impl CardTransaction for VirtualTransaction<'_> {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        Ok(self.card.transmit(command))
    }
}

impl CardBackend for VirtualCardBackend {
    fn transaction(&mut self) -> Result<Box<dyn CardTransaction + '_>, TransportError> {
        Ok(Box::new(VirtualTransaction { card: self.card() }))
    }

    fn capabilities(&self) -> LinkCapabilities {
        let options = self.card().options();
        LinkCapabilities {
            extended_length: options.extended_length,
            contactless: options.interface == Interface::Contactless,
        }
    }

    fn name(&self) -> String {
        self.name.clone()
    }
}
