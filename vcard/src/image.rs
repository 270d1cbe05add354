//! The virtual card image: a TOML file holding everything a virtual PIV card holds, so `pivtap vcard` commands can keep a card in a file.
//!
//! The file is meant to be read and edited by a person testing PIV software.
//! It contains the card's secrets (PIN, PUK, management key, private keys):
//! keep it private. pivtap writes it with mode 0600 and replaces it
//! atomically; comments you add by hand are lost the next time pivtap saves
//! the card.
//!
//! # Example
//!
//! ```toml
//! # pivtap virtual PIV card image. It holds the card's PIN, PUK, management
//! # key and private keys: keep it private.
//! format = "pivtap-card-image"
//! version = 1
//!
//! [card]
//! serial = 10000001
//! label = "Alice Example"
//! extended_length = true
//! contactless = false
//!
//! [pin]
//! value = "123456"
//! retries_left = 3
//! max_retries = 3
//!
//! [puk]
//! value = "12345678"
//! retries_left = 3
//! max_retries = 3
//!
//! [management_key]
//! algorithm = "3des"
//! key = "010203040506070801020304050607080102030405060708"
//!
//! [[keys]]
//! slot = "9a"
//! algorithm = "p256"
//! private_key = """
//! -----BEGIN PRIVATE KEY-----
//! MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgcENCskb/uxXTWPG6
//! QgHusukbwvBZVNvZ7SHwObnGYG+hRANCAARLxrEf+GzIRvRQoW7hPFqa3h6hP56B
//! ZTY5rUeV57maqP9oFoIqXVut1i8Vbm8FdSZnlXWboMS1O8Bz/KV87d73
//! -----END PRIVATE KEY-----
//! """
//!
//! [[objects]]
//! tag = "5FC10C"
//! name = "Key History Object"
//! data = "wQEAwgEA/gA="
//! ```
//!
//! # Fields
//!
//! - `format` = `"pivtap-card-image"` and `version` = `1`: what the file is.
//!   Both are checked first, so a different file is refused with a clear error.
//! - `[card]`
//!   - `serial`: the serial number the card reports (0 to 4294967295).
//!   - `label`: optional, a note for people; the card never reports it.
//!   - `extended_length` (default `true`): `false` makes the card refuse
//!     extended-length APDUs, like many NFC readers and older cards, so hosts
//!     must use command chaining and GET RESPONSE.
//!   - `contactless` (default `false`): `true` makes the card behave as one
//!     read over a contactless interface (SP 800-73-4 Part 1 §3.5: only the
//!     card authentication key and the free-read objects are usable).
//!   - `quirks` (default none): third-party card behaviours the card takes
//!     on, e.g. `quirks = ["strict-7c", "plain-6300", "keep-pin-on-reset"]`;
//!     see [`super::quirks::Quirk`].
//! - `[pin]` and `[puk]`
//!   - `value`: the PIN (6 to 8 digits) or PUK (6 to 8 characters), quoted.
//!   - `retries_left`: wrong attempts left before the value blocks (0 = blocked).
//!   - `max_retries`: 1 to 15; what a successful verification or an unblock restores.
//! - `[management_key]`
//!   - `algorithm`: `3des`, `aes128`, `aes192` or `aes256`.
//!   - `key`: the key in hex (24, 16, 24 or 32 bytes). The example is the
//!     factory default key of PIV cards.
//! - `[[keys]]`, one entry per key slot that holds a key:
//!   - `slot`: `9a`, `9c`, `9d`, `9e` or a retired slot `82` to `95`.
//!   - `algorithm`: `rsa2048`, `p256` or `p384`; must match the key.
//!   - `private_key`: the private key as PKCS#8 PEM (`BEGIN PRIVATE KEY`,
//!     as `openssl genpkey` writes it); copy it to a file and run
//!     `openssl pkey -in key.pem -text` to inspect it.
//! - `[[objects]]`, one entry per data object present on the card:
//!   - `tag`: the object tag in hex, e.g. `5FC102` (CHUID) or `5FC105` (the
//!     9A certificate).
//!   - `name`: optional and informational; pivtap writes the object's name
//!     and ignores this field when reading.
//!   - `data`: base64 (standard alphabet, padded; line breaks allowed) of the
//!     object's content: what GET DATA returns inside its outer tag (`53`, or
//!     `7E` for the discovery object). For a certificate object that is
//!     `70 <certificate> 71 <certinfo> FE 00`.
//!
//! # Protected cards
//!
//! A protected card (`pivtap vcard enroll`, `pivtap vcard new --protect`)
//! does not keep its PIN and PUK, and keeps its private keys sealed; see
//! [`super::protection`] for the design and its limits. Its image differs
//! from the one above in three places:
//!
//! ```toml
//! [pin]
//! retries_left = 3
//! max_retries = 3
//!
//! [puk]
//! retries_left = 3
//! max_retries = 3
//!
//! [protection]
//! kdf = "argon2id"
//! memory_kib = 19456
//! iterations = 2
//! parallelism = 1
//! pin_salt = "sL3v0mB4q0kU4n2oZp3Ybw=="
//! pin_wrapped_key = "…"
//! puk_salt = "xq0H3cY2m3c9rS7mW1bH2A=="
//! puk_wrapped_key = "…"
//!
//! [[keys]]
//! slot = "9a"
//! algorithm = "p256"
//! sealed_private_key = "…"
//! ```
//!
//! - `[pin]` and `[puk]` have no `value`: the card does not know them.
//! - `[protection]` (present only on protected cards; an image without it
//!   is the unprotected format above, unchanged):
//!   - `kdf` = `"argon2id"`, with `memory_kib`, `iterations` and
//!     `parallelism`: the Argon2id (version 0x13) cost. New cards use 19456
//!     KiB, 2, 1 (OWASP's recommendation); smaller values load (tests use
//!     them) but make offline PIN guessing cheaper.
//!   - `pin_salt`, `puk_salt`: 16 random bytes each, base64.
//!   - `pin_wrapped_key`, `puk_wrapped_key`: base64 of a 12-byte nonce and
//!     the AES-256-GCM encryption (with its 16-byte tag) of the card's
//!     32-byte data key under Argon2id(PIN, pin_salt), resp.
//!     Argon2id(PUK, puk_salt).
//! - `[[keys]]` entries carry `sealed_private_key` instead of
//!   `private_key`: base64 of a 12-byte nonce and the AES-256-GCM
//!   encryption, under the data key, of the PKCS#8 DER private key, with
//!   the slot and algorithm as associated data. A card authentication key
//!   (9E) stays a clear `private_key`: PIV uses it without a PIN.
//! - The management key stays in the clear: the card needs it without a PIN.

use std::collections::HashSet;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use pivtap_apdu::piv::{
    Algorithm, KeyReference, ObjectTag, Pin, Puk, ReferenceDataError, UnknownName,
};
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use zeroize::Zeroizing;

use super::keys::{KeyError, SlotKey};
use super::protection::{KdfParams, ProtectionError, SealedKey, WrappedKey};
use super::quirks::{Quirk, Quirks, UnknownQuirk};
use pivtap_card::management_key::{ManagementKey, ManagementKeyError};

/// The value of the `format` field.
pub const IMAGE_FORMAT: &str = "pivtap-card-image";
/// The format version this code reads and writes.
pub const IMAGE_VERSION: u32 = 1;
/// The largest allowed `max_retries` for the PIN and the PUK.
pub const MAX_RETRY_LIMIT: u8 = 15;
/// The comment at the top of every saved image.
const FILE_HEADER: &str = "# pivtap virtual PIV card image. It holds the card's PIN, PUK, management\n\
                           # key and private keys: keep it private.\n";
/// The only `[protection] kdf` this code reads and writes.
pub const PROTECTION_KDF: &str = "argon2id";
/// The largest PIV data object tag (three bytes).
const MAX_OBJECT_TAG: u32 = 0xFF_FFFF;

/// Why a card image could not be read, checked or written. Never contains a secret.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The file could not be read.
    #[error("cannot read card image {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The file could not be written.
    #[error("cannot write card image {}", .path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The content of a file is not a valid card image.
    #[error("card image {}", .path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with its content.
        source: Box<ImageError>,
    },
    /// The text is not valid TOML, or does not have the fields and types of a card image.
    #[error("{}{message}", describe_location(*.location))]
    Toml {
        /// Line and column (from 1) of the problem, when known.
        location: Option<(usize, usize)>,
        /// What is wrong.
        message: String,
    },
    /// `format` is missing or is not `"pivtap-card-image"`.
    #[error("not a pivtap card image: `format` is {}, expected \"{IMAGE_FORMAT}\"", .found.as_deref().unwrap_or("missing"))]
    NotACardImage {
        /// The `format` value found (as TOML), if any.
        found: Option<String>,
    },
    /// `version` is missing or is not a version this code reads.
    #[error("card image `version` is {}; this pivtap reads version {IMAGE_VERSION}", .found.as_deref().unwrap_or("missing"))]
    UnsupportedVersion {
        /// The `version` value found (as TOML), if any.
        found: Option<String>,
    },
    /// `[card] quirks` names a behaviour this pivtap does not know.
    #[error("[card] quirks: {0}")]
    UnknownQuirk(UnknownQuirk),
    /// `[pin] value` is not a valid PIN.
    #[error("[pin] value: {0}")]
    InvalidPin(ReferenceDataError),
    /// `[puk] value` is not a valid PUK.
    #[error("[puk] value: {0}")]
    InvalidPuk(ReferenceDataError),
    /// `max_retries` is outside 1 to 15.
    #[error("[{table}] max_retries must be 1 to {MAX_RETRY_LIMIT}, got {max_retries}")]
    MaxRetriesOutOfRange {
        /// `pin` or `puk`.
        table: &'static str,
        /// The value found.
        max_retries: u8,
    },
    /// `retries_left` is more than `max_retries`.
    #[error("[{table}] retries_left ({retries_left}) is more than max_retries ({max_retries})")]
    RetriesLeftAboveMax {
        /// `pin` or `puk`.
        table: &'static str,
        /// The value found.
        retries_left: u8,
        /// The limit.
        max_retries: u8,
    },
    /// `[management_key] algorithm` is not an algorithm name.
    #[error("[management_key] algorithm: {0}")]
    InvalidManagementKeyAlgorithm(UnknownName),
    /// `[management_key]` does not hold a valid key for its algorithm.
    #[error("[management_key] {0}")]
    InvalidManagementKey(ManagementKeyError),
    /// A `[[keys]]` slot is not an asymmetric key slot.
    #[error("[[keys]] entry {entry}: slot {slot:?} is not a key slot (9a, 9c, 9d, 9e or 82-95)")]
    InvalidSlot {
        /// The entry number, from 1.
        entry: usize,
        /// The slot as written.
        slot: String,
    },
    /// A `[[keys]]` algorithm is not an algorithm name.
    #[error("[[keys]] entry {entry}: invalid algorithm")]
    InvalidKeyAlgorithm {
        /// The entry number, from 1.
        entry: usize,
        /// Why the name was refused.
        source: UnknownName,
    },
    /// A `[[keys]]` private key could not be read.
    #[error("[[keys]] entry {entry} (slot {slot}): invalid private_key")]
    InvalidPrivateKey {
        /// The entry number, from 1.
        entry: usize,
        /// The slot.
        slot: KeyReference,
        /// Why the key was refused.
        source: KeyError,
    },
    /// A `[[keys]]` algorithm does not match its private key.
    #[error(
        "[[keys]] entry {entry} (slot {slot}): algorithm is {declared} but the private key is {actual}"
    )]
    KeyAlgorithmMismatch {
        /// The entry number, from 1.
        entry: usize,
        /// The slot.
        slot: KeyReference,
        /// The `algorithm` field.
        declared: Algorithm,
        /// The algorithm of the private key.
        actual: Algorithm,
    },
    /// Two `[[keys]]` entries name the same slot.
    #[error("slot {slot} appears in more than one [[keys]] entry")]
    DuplicateSlot {
        /// The slot.
        slot: KeyReference,
    },
    /// An `[[objects]]` tag is not 1 to 3 bytes of hex.
    #[error(
        "[[objects]] entry {entry}: tag {tag:?} is not an object tag (1 to 3 bytes of hex, e.g. \"5FC102\")"
    )]
    InvalidObjectTag {
        /// The entry number, from 1.
        entry: usize,
        /// The tag as written.
        tag: String,
    },
    /// An `[[objects]]` data field is not valid base64.
    #[error("[[objects]] entry {entry} (tag {tag}): data is not valid base64")]
    InvalidObjectData {
        /// The entry number, from 1.
        entry: usize,
        /// The object.
        tag: ObjectTag,
    },
    /// Two `[[objects]]` entries have the same tag.
    #[error("object {tag} appears in more than one [[objects]] entry")]
    DuplicateObject {
        /// The object.
        tag: ObjectTag,
    },
    /// The image could not be written as TOML.
    #[error("cannot encode the card image as TOML: {message}")]
    Encode {
        /// What went wrong.
        message: String,
    },
    /// `[pin]` or `[puk]` has no `value` and the image has no `[protection]`.
    #[error("[{table}] value is missing (only a protected card, with [protection], has none)")]
    MissingValue {
        /// `pin` or `puk`.
        table: &'static str,
    },
    /// `[pin]` or `[puk]` has a `value` in a protected image.
    #[error("[{table}] value must not be written in a protected image (the card does not keep it)")]
    ValueInProtectedImage {
        /// `pin` or `puk`.
        table: &'static str,
    },
    /// The PIN and the PUK are not protected alike (one in the clear, or other Argon2id parameters).
    #[error(
        "the PIN and the PUK must both be in the clear, or both wrap the data key with one [protection]"
    )]
    MixedProtection,
    /// `[protection] kdf` is not `argon2id`.
    #[error("[protection] kdf is {found:?}; this pivtap reads \"{PROTECTION_KDF}\"")]
    UnsupportedKdf {
        /// The value found.
        found: String,
    },
    /// A `[protection]` field is not valid.
    #[error("[protection] {field}")]
    InvalidProtection {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        source: ProtectionError,
    },
    /// A `[protection]` field is not valid base64.
    #[error("[protection] {field} is not valid base64")]
    ProtectionNotBase64 {
        /// The field.
        field: &'static str,
    },
    /// A `[[keys]]` entry has both or neither of `private_key` and `sealed_private_key`.
    #[error(
        "[[keys]] entry {entry} (slot {slot}): needs exactly one of private_key and sealed_private_key"
    )]
    KeyMaterial {
        /// The entry number, from 1.
        entry: usize,
        /// The slot.
        slot: KeyReference,
    },
    /// A `[[keys]]` entry is sealed but the image has no `[protection]`.
    #[error("[[keys]] entry {entry} (slot {slot}): a sealed_private_key needs [protection]")]
    SealedKeyWithoutProtection {
        /// The entry number, from 1.
        entry: usize,
        /// The slot.
        slot: KeyReference,
    },
    /// A `[[keys]]` sealed key is not base64 of a sealed key.
    #[error(
        "[[keys]] entry {entry} (slot {slot}): sealed_private_key is not base64 of a sealed key"
    )]
    InvalidSealedKey {
        /// The entry number, from 1.
        entry: usize,
        /// The slot.
        slot: KeyReference,
    },
}

fn describe_location(location: Option<(usize, usize)>) -> String {
    location
        .map(|(line, column)| format!("line {line}, column {column}: "))
        .unwrap_or_default()
}

/// A whole virtual card: settings, PIN, PUK, management key, private keys and data objects.
///
/// `Debug` redacts every secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardImage {
    /// Card settings (`[card]`).
    pub card: CardSettings,
    /// The PIN and its retry counter (`[pin]`, and `[protection]` for a protected card).
    pub pin: ReferenceDataState<StoredSecret<Pin>>,
    /// The PUK and its retry counter (`[puk]`, and `[protection]` for a protected card).
    pub puk: ReferenceDataState<StoredSecret<Puk>>,
    /// The card management key (`[management_key]`).
    pub management_key: ManagementKey,
    /// The private keys, one per slot (`[[keys]]`).
    pub keys: Vec<KeyEntry>,
    /// The data objects (`[[objects]]`).
    pub objects: Vec<DataObject>,
}

/// The card's settings (`[card]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CardSettings {
    /// The serial number the card reports.
    pub serial: u32,
    /// A note for people; never reported by the card.
    pub label: Option<String>,
    /// Whether the card accepts extended-length APDUs.
    pub extended_length: bool,
    /// Whether the card behaves as read over a contactless interface.
    pub contactless: bool,
    /// Third-party card behaviours the card takes on.
    pub quirks: Quirks,
}

/// A PIN or PUK with its retry counter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReferenceDataState<T> {
    /// The value.
    pub value: T,
    /// Wrong attempts left before it blocks (0 = blocked).
    pub retries_left: u8,
    /// What a successful verification or an unblock restores (1 to 15).
    pub max_retries: u8,
}

/// A PIN or PUK as the image holds it. `Debug` shows no secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoredSecret<T> {
    /// In the clear (`value = "..."`): an unprotected card.
    Clear(T),
    /// Not in the file: the card's data key wrapped under it (`[protection]`).
    Wrapped(WrappedKey),
}

impl<T> StoredSecret<T> {
    /// The value, on an unprotected card.
    #[must_use]
    pub fn clear(&self) -> Option<&T> {
        match self {
            StoredSecret::Clear(value) => Some(value),
            StoredSecret::Wrapped(_) => None,
        }
    }

    /// The wrapped data key, on a protected card.
    #[must_use]
    pub fn wrapped(&self) -> Option<&WrappedKey> {
        match self {
            StoredSecret::Clear(_) => None,
            StoredSecret::Wrapped(wrapped) => Some(wrapped),
        }
    }
}

impl StoredSecret<Pin> {
    /// The PIN's bytes; empty on a protected card, which does not keep it.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        self.clear().map_or(&[], Pin::as_bytes)
    }
}

impl StoredSecret<Puk> {
    /// The PUK's bytes; empty on a protected card, which does not keep it.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        self.clear().map_or(&[], Puk::as_bytes)
    }
}

/// The private key of one slot: PKCS#8 PEM, or sealed on a protected card.
/// `Debug` shows only the slot and algorithm.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyEntry {
    slot: KeyReference,
    algorithm: Algorithm,
    material: KeyMaterial,
}

#[derive(Clone, PartialEq, Eq)]
enum KeyMaterial {
    Pem(Zeroizing<String>),
    Sealed(SealedKey),
}

/// One data object: its tag and its content. `Debug` shows the length, not the content.
#[derive(Clone, PartialEq, Eq)]
pub struct DataObject {
    /// The object.
    pub tag: ObjectTag,
    /// The content inside the outer tag of GET DATA's response.
    pub data: Vec<u8>,
}

impl KeyEntry {
    /// Stores `key` for `slot`.
    ///
    /// # Errors
    /// [`KeyError::Encoding`] if the key cannot be written as PKCS#8.
    pub fn new(slot: KeyReference, key: &SlotKey) -> Result<Self, KeyError> {
        Ok(KeyEntry {
            slot,
            algorithm: key.algorithm(),
            material: KeyMaterial::Pem(key.to_pkcs8_pem()?),
        })
    }

    /// Stores a sealed key for `slot` (a protected card).
    #[must_use]
    pub fn sealed(slot: KeyReference, key: SealedKey) -> Self {
        KeyEntry {
            slot,
            algorithm: key.algorithm(),
            material: KeyMaterial::Sealed(key),
        }
    }

    /// The sealed key, if the entry is sealed.
    #[must_use]
    pub fn sealed_key(&self) -> Option<&SealedKey> {
        match &self.material {
            KeyMaterial::Sealed(key) => Some(key),
            KeyMaterial::Pem(_) => None,
        }
    }

    /// The slot.
    #[must_use]
    pub fn slot(&self) -> KeyReference {
        self.slot
    }

    /// The key's algorithm.
    #[must_use]
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The private key as PKCS#8 PEM; empty for a sealed key.
    #[must_use]
    pub fn private_key_pem(&self) -> &str {
        match &self.material {
            KeyMaterial::Pem(pem) => pem,
            KeyMaterial::Sealed(_) => "",
        }
    }

    /// Reads the private key back.
    ///
    /// # Errors
    /// [`KeyError::Sealed`] for a sealed key; the errors of
    /// [`SlotKey::from_pkcs8_pem`] (not expected: entries hold keys that were
    /// read or written before).
    pub fn slot_key(&self) -> Result<SlotKey, KeyError> {
        match &self.material {
            KeyMaterial::Pem(pem) => SlotKey::from_pkcs8_pem(pem),
            KeyMaterial::Sealed(_) => Err(KeyError::Sealed),
        }
    }
}

impl fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyEntry({}, {}, REDACTED)", self.slot, self.algorithm)
    }
}

impl fmt::Debug for DataObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DataObject({:06X} {}, {} bytes)",
            self.tag.tag(),
            self.tag.name(),
            self.data.len()
        )
    }
}

impl CardImage {
    /// Reads and checks an image from TOML text.
    ///
    /// # Errors
    /// [`ImageError::Toml`] for syntax, missing fields or wrong types;
    /// [`ImageError::NotACardImage`] or [`ImageError::UnsupportedVersion`]
    /// for another kind of file; otherwise the error of the first field that
    /// fails its check (see [`ImageError`]).
    pub fn from_toml_str(text: &str) -> Result<Self, ImageError> {
        let header: FormatHeader =
            toml::from_str(text).map_err(|error| toml_error(text, &error))?;
        if header.format.as_ref().and_then(toml::Value::as_str) != Some(IMAGE_FORMAT) {
            return Err(ImageError::NotACardImage {
                found: header.format.map(|value| value.to_string()),
            });
        }
        if header.version.as_ref().and_then(toml::Value::as_integer)
            != Some(i64::from(IMAGE_VERSION))
        {
            return Err(ImageError::UnsupportedVersion {
                found: header.version.map(|value| value.to_string()),
            });
        }
        let file: ImageFile = toml::from_str(text).map_err(|error| toml_error(text, &error))?;
        let protection = file.protection.as_ref().map(read_protection).transpose()?;
        let protected = protection.is_some();
        let (pin, puk) = match protection {
            None => (
                StoredSecret::Clear(
                    Pin::new(&clear_value("pin", &file.pin)?.0).map_err(ImageError::InvalidPin)?,
                ),
                StoredSecret::Clear(
                    Puk::new(&clear_value("puk", &file.puk)?.0).map_err(ImageError::InvalidPuk)?,
                ),
            ),
            Some((pin, puk)) => {
                for (table, reference) in [("pin", &file.pin), ("puk", &file.puk)] {
                    if reference.value.is_some() {
                        return Err(ImageError::ValueInProtectedImage { table });
                    }
                }
                (StoredSecret::Wrapped(pin), StoredSecret::Wrapped(puk))
            }
        };
        let image = CardImage {
            card: CardSettings {
                serial: file.card.serial,
                label: file.card.label,
                extended_length: file.card.extended_length,
                contactless: file.card.contactless,
                quirks: read_quirks(&file.card.quirks)?,
            },
            pin: ReferenceDataState {
                value: pin,
                retries_left: file.pin.retries_left,
                max_retries: file.pin.max_retries,
            },
            puk: ReferenceDataState {
                value: puk,
                retries_left: file.puk.retries_left,
                max_retries: file.puk.max_retries,
            },
            management_key: read_management_key(&file.management_key)?,
            keys: file
                .keys
                .iter()
                .enumerate()
                .map(|(index, entry)| read_key_entry(index + 1, entry, protected))
                .collect::<Result<_, _>>()?,
            objects: file
                .objects
                .iter()
                .enumerate()
                .map(|(index, object)| read_object(index + 1, object))
                .collect::<Result<_, _>>()?,
        };
        image.validate()?;
        Ok(image)
    }

    /// Writes the image as TOML, after checking it with [`CardImage::validate`].
    ///
    /// # Errors
    /// The errors of [`CardImage::validate`], or [`ImageError::Encode`].
    pub fn to_toml_string(&self) -> Result<Zeroizing<String>, ImageError> {
        self.validate()?;
        let protection = match (&self.pin.value, &self.puk.value) {
            (StoredSecret::Wrapped(pin), StoredSecret::Wrapped(puk)) => Some(ProtectionFile {
                kdf: PROTECTION_KDF.to_owned(),
                memory_kib: pin.kdf().memory_kib(),
                iterations: pin.kdf().iterations(),
                parallelism: pin.kdf().parallelism(),
                pin_salt: BASE64.encode(pin.salt()),
                pin_wrapped_key: BASE64.encode(pin.wrapped()),
                puk_salt: BASE64.encode(puk.salt()),
                puk_wrapped_key: BASE64.encode(puk.wrapped()),
            }),
            _ => None,
        };
        let file = ImageFile {
            format: IMAGE_FORMAT.to_owned(),
            version: IMAGE_VERSION,
            card: CardFile {
                serial: self.card.serial,
                label: self.card.label.clone(),
                extended_length: self.card.extended_length,
                contactless: self.card.contactless,
                quirks: self
                    .card
                    .quirks
                    .iter()
                    .map(|q| q.name().to_owned())
                    .collect(),
            },
            pin: ReferenceDataFile {
                value: self
                    .pin
                    .value
                    .clear()
                    .map(|pin| SecretText::from_bytes(pin.as_bytes())),
                retries_left: self.pin.retries_left,
                max_retries: self.pin.max_retries,
            },
            puk: ReferenceDataFile {
                value: self
                    .puk
                    .value
                    .clear()
                    .map(|puk| SecretText::from_bytes(puk.as_bytes())),
                retries_left: self.puk.retries_left,
                max_retries: self.puk.max_retries,
            },
            management_key: ManagementKeyFile {
                algorithm: self.management_key.algorithm().name().to_owned(),
                key: SecretText(self.management_key.to_hex()),
            },
            protection,
            keys: self
                .keys
                .iter()
                .map(|entry| {
                    let (private_key, sealed_private_key) = match &entry.material {
                        KeyMaterial::Pem(pem) => (Some(SecretText(pem.clone())), None),
                        KeyMaterial::Sealed(sealed) => {
                            (None, Some(BASE64.encode(sealed.as_bytes())))
                        }
                    };
                    KeyFile {
                        slot: entry.slot.to_string(),
                        algorithm: entry.algorithm.name().to_owned(),
                        private_key,
                        sealed_private_key,
                    }
                })
                .collect(),
            objects: self
                .objects
                .iter()
                .map(|object| ObjectFile {
                    tag: hex::encode_upper(object.tag.tag_bytes()),
                    name: Some(object.tag.name().to_owned()),
                    data: BASE64.encode(&object.data),
                })
                .collect(),
        };
        let body = Zeroizing::new(toml::to_string(&file).map_err(|error| ImageError::Encode {
            message: error.to_string(),
        })?);
        let mut text = Zeroizing::new(String::with_capacity(FILE_HEADER.len() + body.len()));
        text.push_str(FILE_HEADER);
        text.push_str(&body);
        Ok(text)
    }

    /// Whether the image is of a protected card.
    #[must_use]
    pub fn is_protected(&self) -> bool {
        matches!(self.pin.value, StoredSecret::Wrapped(_))
    }

    /// Checks what the types alone do not: retry counters, key slots, no
    /// duplicate slots or objects, object tags of at most three bytes, a PIN
    /// and PUK protected alike, sealed keys only on a protected card.
    ///
    /// # Errors
    /// [`ImageError::MaxRetriesOutOfRange`], [`ImageError::RetriesLeftAboveMax`],
    /// [`ImageError::InvalidSlot`], [`ImageError::DuplicateSlot`],
    /// [`ImageError::InvalidObjectTag`] or [`ImageError::DuplicateObject`].
    pub fn validate(&self) -> Result<(), ImageError> {
        check_retries("pin", self.pin.retries_left, self.pin.max_retries)?;
        check_retries("puk", self.puk.retries_left, self.puk.max_retries)?;
        let protected = match (&self.pin.value, &self.puk.value) {
            (StoredSecret::Clear(_), StoredSecret::Clear(_)) => false,
            (StoredSecret::Wrapped(pin), StoredSecret::Wrapped(puk)) if pin.kdf() == puk.kdf() => {
                true
            }
            _ => return Err(ImageError::MixedProtection),
        };
        let mut slots = HashSet::new();
        for (index, entry) in self.keys.iter().enumerate() {
            if !protected && entry.sealed_key().is_some() {
                return Err(ImageError::SealedKeyWithoutProtection {
                    entry: index + 1,
                    slot: entry.slot,
                });
            }
            if !entry.slot.is_asymmetric_slot() {
                return Err(ImageError::InvalidSlot {
                    entry: index + 1,
                    slot: entry.slot.to_string(),
                });
            }
            if !slots.insert(entry.slot) {
                return Err(ImageError::DuplicateSlot { slot: entry.slot });
            }
        }
        let mut tags = HashSet::new();
        for (index, object) in self.objects.iter().enumerate() {
            let tag = object.tag.tag();
            if tag == 0 || tag > MAX_OBJECT_TAG {
                return Err(ImageError::InvalidObjectTag {
                    entry: index + 1,
                    tag: format!("{tag:X}"),
                });
            }
            if !tags.insert(tag) {
                return Err(ImageError::DuplicateObject { tag: object.tag });
            }
        }
        Ok(())
    }

    /// Reads and checks an image file.
    ///
    /// # Errors
    /// [`ImageError::Read`] if the file cannot be read, [`ImageError::InFile`]
    /// (naming the file) if its content is not a valid image.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ImageError> {
        let path = path.as_ref();
        let text = Zeroizing::new(fs::read_to_string(path).map_err(|source| ImageError::Read {
            path: path.to_owned(),
            source,
        })?);
        CardImage::from_toml_str(&text).map_err(|error| ImageError::InFile {
            path: path.to_owned(),
            source: Box::new(error),
        })
    }

    /// Writes the image to `path` atomically: the text goes to a new
    /// temporary file (mode 0600 on Unix) in the same directory, which is
    /// flushed to disk and renamed over `path`; then the directory is flushed.
    /// A crash at any point leaves either the old file or the new one, whole.
    ///
    /// # Errors
    /// The errors of [`CardImage::to_toml_string`], or [`ImageError::Write`].
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), ImageError> {
        let path = path.as_ref();
        let text = self.to_toml_string()?;
        let write_error = |source| ImageError::Write {
            path: path.to_owned(),
            source,
        };
        pivtap_files::write_atomically(path, text.as_bytes(), pivtap_files::PRIVATE_FILE_MODE)
            .map_err(write_error)
    }
}

fn check_retries(table: &'static str, retries_left: u8, max_retries: u8) -> Result<(), ImageError> {
    if !(1..=MAX_RETRY_LIMIT).contains(&max_retries) {
        return Err(ImageError::MaxRetriesOutOfRange { table, max_retries });
    }
    if retries_left > max_retries {
        return Err(ImageError::RetriesLeftAboveMax {
            table,
            retries_left,
            max_retries,
        });
    }
    Ok(())
}

fn read_management_key(file: &ManagementKeyFile) -> Result<ManagementKey, ImageError> {
    let algorithm: Algorithm = file
        .algorithm
        .parse()
        .map_err(ImageError::InvalidManagementKeyAlgorithm)?;
    ManagementKey::from_hex(algorithm, &file.key.0).map_err(ImageError::InvalidManagementKey)
}

/// The `value` of `[pin]` or `[puk]` of an unprotected image.
fn clear_value<'a>(
    table: &'static str,
    file: &'a ReferenceDataFile,
) -> Result<&'a SecretText, ImageError> {
    file.value
        .as_ref()
        .ok_or(ImageError::MissingValue { table })
}

/// Reads `[protection]`: the PIN's and the PUK's wrapped data key.
fn read_protection(file: &ProtectionFile) -> Result<(WrappedKey, WrappedKey), ImageError> {
    if file.kdf != PROTECTION_KDF {
        return Err(ImageError::UnsupportedKdf {
            found: file.kdf.clone(),
        });
    }
    let kdf =
        KdfParams::new(file.memory_kib, file.iterations, file.parallelism).map_err(|source| {
            ImageError::InvalidProtection {
                field: "kdf parameters",
                source,
            }
        })?;
    let decode = |field: &'static str, text: &str| {
        let text: String = text.split_ascii_whitespace().collect();
        BASE64
            .decode(text)
            .map_err(|_| ImageError::ProtectionNotBase64 { field })
    };
    let wrapped = |salt_field, salt: &str, key_field, key: &str| {
        WrappedKey::from_parts(kdf, &decode(salt_field, salt)?, &decode(key_field, key)?).map_err(
            |source| ImageError::InvalidProtection {
                field: key_field,
                source,
            },
        )
    };
    Ok((
        wrapped(
            "pin_salt",
            &file.pin_salt,
            "pin_wrapped_key",
            &file.pin_wrapped_key,
        )?,
        wrapped(
            "puk_salt",
            &file.puk_salt,
            "puk_wrapped_key",
            &file.puk_wrapped_key,
        )?,
    ))
}

fn read_key_entry(entry: usize, file: &KeyFile, protected: bool) -> Result<KeyEntry, ImageError> {
    let invalid_slot = || ImageError::InvalidSlot {
        entry,
        slot: file.slot.clone(),
    };
    let slot: KeyReference = file.slot.parse().map_err(|_| invalid_slot())?;
    if !slot.is_asymmetric_slot() {
        return Err(invalid_slot());
    }
    let declared: Algorithm = file
        .algorithm
        .parse()
        .map_err(|source| ImageError::InvalidKeyAlgorithm { entry, source })?;
    let private_key = match (&file.private_key, &file.sealed_private_key) {
        (Some(private_key), None) => private_key,
        (None, Some(sealed)) => {
            if !protected {
                return Err(ImageError::SealedKeyWithoutProtection { entry, slot });
            }
            let text: String = sealed.split_ascii_whitespace().collect();
            let sealed = BASE64
                .decode(text)
                .ok()
                .and_then(|bytes| SealedKey::from_bytes(declared, &bytes).ok())
                .ok_or(ImageError::InvalidSealedKey { entry, slot })?;
            return Ok(KeyEntry::sealed(slot, sealed));
        }
        _ => return Err(ImageError::KeyMaterial { entry, slot }),
    };
    let key = SlotKey::from_pkcs8_pem(&private_key.0).map_err(|source| {
        ImageError::InvalidPrivateKey {
            entry,
            slot,
            source,
        }
    })?;
    if key.algorithm() != declared {
        return Err(ImageError::KeyAlgorithmMismatch {
            entry,
            slot,
            declared,
            actual: key.algorithm(),
        });
    }
    Ok(KeyEntry {
        slot,
        algorithm: declared,
        material: KeyMaterial::Pem(private_key.0.clone()),
    })
}

fn read_object(entry: usize, file: &ObjectFile) -> Result<DataObject, ImageError> {
    let tag = hex::decode(file.tag.trim())
        .ok()
        .filter(|bytes| (1..=3).contains(&bytes.len()))
        .map(|bytes| {
            bytes
                .iter()
                .fold(0_u32, |tag, byte| tag << 8 | u32::from(*byte))
        })
        .filter(|tag| *tag != 0)
        .map(ObjectTag::from_tag)
        .ok_or_else(|| ImageError::InvalidObjectTag {
            entry,
            tag: file.tag.clone(),
        })?;
    let base64_text: String = file.data.split_ascii_whitespace().collect();
    let data = BASE64
        .decode(base64_text)
        .map_err(|_| ImageError::InvalidObjectData { entry, tag })?;
    Ok(DataObject { tag, data })
}

/// Turns a TOML error into [`ImageError::Toml`] with a line and column, and
/// without the quoted source line that the error's `Display` would show (it
/// may hold a secret).
fn toml_error(text: &str, error: &toml::de::Error) -> ImageError {
    let location = error.span().and_then(|span| {
        let before = text.get(..span.start)?;
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
        let column = before.get(line_start..)?.chars().count() + 1;
        Some((line, column))
    });
    ImageError::Toml {
        location,
        message: error.message().trim_end().to_owned(),
    }
}

/// The two fields checked before anything else, so a different file gets a clear error.
#[derive(Deserialize)]
struct FormatHeader {
    format: Option<toml::Value>,
    version: Option<toml::Value>,
}

/// The file as TOML sees it; [`CardImage`] is the checked, typed form.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageFile {
    format: String,
    version: u32,
    card: CardFile,
    pin: ReferenceDataFile,
    puk: ReferenceDataFile,
    management_key: ManagementKeyFile,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    protection: Option<ProtectionFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    keys: Vec<KeyFile>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    objects: Vec<ObjectFile>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CardFile {
    serial: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    label: Option<String>,
    #[serde(default = "extended_length_by_default")]
    extended_length: bool,
    #[serde(default)]
    contactless: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    quirks: Vec<String>,
}

fn read_quirks(names: &[String]) -> Result<Quirks, ImageError> {
    names
        .iter()
        .map(|name| name.parse::<Quirk>())
        .collect::<Result<Quirks, _>>()
        .map_err(ImageError::UnknownQuirk)
}

fn extended_length_by_default() -> bool {
    true
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReferenceDataFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<SecretText>,
    retries_left: u8,
    max_retries: u8,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManagementKeyFile {
    algorithm: String,
    key: SecretText,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    slot: String,
    algorithm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    private_key: Option<SecretText>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed_private_key: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProtectionFile {
    kdf: String,
    memory_kib: u32,
    iterations: u32,
    parallelism: u32,
    pin_salt: String,
    pin_wrapped_key: String,
    puk_salt: String,
    puk_wrapped_key: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ObjectFile {
    tag: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    data: String,
}

/// A secret field of the file: zeroized on drop, and never echoed in a type
/// error (serde's default message would quote an unquoted PIN such as `123456`).
struct SecretText(Zeroizing<String>);

impl SecretText {
    fn from_bytes(bytes: &[u8]) -> Self {
        SecretText(Zeroizing::new(String::from_utf8_lossy(bytes).into_owned()))
    }
}

impl Serialize for SecretText {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_string(SecretTextVisitor)
    }
}

struct SecretTextVisitor;

impl SecretTextVisitor {
    fn not_a_string<E: de::Error>() -> E {
        E::custom("expected a quoted string, found a number")
    }
}

impl Visitor<'_> for SecretTextVisitor {
    type Value = SecretText;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a quoted string")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<SecretText, E> {
        Ok(SecretText(Zeroizing::new(text.to_owned())))
    }

    fn visit_string<E: de::Error>(self, text: String) -> Result<SecretText, E> {
        Ok(SecretText(Zeroizing::new(text)))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<SecretText, E> {
        Err(Self::not_a_string())
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<SecretText, E> {
        Err(Self::not_a_string())
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<SecretText, E> {
        Err(Self::not_a_string())
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<SecretText, E> {
        Err(Self::not_a_string())
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<SecretText, E> {
        Err(Self::not_a_string())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use super::*;

    /// The example file of the module documentation, taken from this source file.
    fn documented_example() -> String {
        let mut example = String::new();
        let example_lines = include_str!("image.rs")
            .lines()
            .map_while(|line| line.strip_prefix("//!"))
            .skip_while(|line| line.trim() != "```toml")
            .skip(1)
            .take_while(|line| line.trim() != "```");
        for line in example_lines {
            example.push_str(line.strip_prefix(' ').unwrap_or(line));
            example.push('\n');
        }
        example
    }

    fn rsa_entry() -> &'static KeyEntry {
        static ENTRY: OnceLock<KeyEntry> = OnceLock::new();
        ENTRY.get_or_init(|| {
            let key = SlotKey::generate(Algorithm::Rsa2048).unwrap();
            KeyEntry::new(KeyReference::DigitalSignature, &key).unwrap()
        })
    }

    fn full_image() -> CardImage {
        let p384 = SlotKey::generate(Algorithm::EccP384).unwrap();
        CardImage {
            card: CardSettings {
                serial: 4_000_000_001,
                label: Some("Bob \"Tester\" Example".to_owned()),
                extended_length: false,
                contactless: true,
                quirks: Quirks::third_party(),
            },
            pin: ReferenceDataState {
                value: StoredSecret::Clear(Pin::new("24681357").unwrap()),
                retries_left: 0,
                max_retries: 5,
            },
            puk: ReferenceDataState {
                value: StoredSecret::Clear(Puk::new("Zq9#x!2w").unwrap()),
                retries_left: 15,
                max_retries: 15,
            },
            management_key: ManagementKey::from_hex(
                Algorithm::Aes256,
                "00112233445566778899AABBCCDDEEFF00112233445566778899AABBCCDDEEFF",
            )
            .unwrap(),
            keys: vec![
                rsa_entry().clone(),
                KeyEntry::new(KeyReference::Retired(20), &p384).unwrap(),
            ],
            objects: vec![
                DataObject {
                    tag: ObjectTag::Chuid,
                    data: (0..=255).collect(),
                },
                DataObject {
                    tag: ObjectTag::Discovery,
                    data: vec![0x4F, 0x0B],
                },
                DataObject {
                    tag: ObjectTag::Other(0x5FFF01),
                    data: Vec::new(),
                },
            ],
        }
    }

    /// Parses `text`, which must fail, and returns the error.
    fn parse_error(text: &str) -> ImageError {
        CardImage::from_toml_str(text).unwrap_err()
    }

    #[test]
    fn documented_example_parses() {
        let example = documented_example();
        assert!(
            example.starts_with("# pivtap virtual PIV card image"),
            "{example}"
        );
        let image = CardImage::from_toml_str(&example).unwrap();
        assert_eq!(image.card.serial, 10_000_001);
        assert_eq!(image.card.label.as_deref(), Some("Alice Example"));
        assert_eq!(image.pin.value.as_bytes(), b"123456");
        assert_eq!(image.puk.value.as_bytes(), b"12345678");
        assert_eq!(image.management_key, ManagementKey::default_key());
        assert_eq!(image.keys.len(), 1);
        assert_eq!(image.keys[0].slot(), KeyReference::PivAuthentication);
        assert_eq!(
            image.keys[0].slot_key().unwrap().algorithm(),
            Algorithm::EccP256
        );
        assert_eq!(image.objects[0].tag, ObjectTag::KeyHistory);
        assert_eq!(image.objects[0].data, [0xC1, 1, 0, 0xC2, 1, 0, 0xFE, 0]);
        // pivtap writes the example back as it is.
        assert_eq!(*image.to_toml_string().unwrap(), example);
    }

    #[test]
    fn round_trips_through_text() {
        let image = full_image();
        let text = image.to_toml_string().unwrap();
        let read = CardImage::from_toml_str(&text).unwrap();
        assert_eq!(read, image);
        assert_eq!(*read.to_toml_string().unwrap(), *text);
        let rsa_key_start = "slot = \"9c\"\nalgorithm = \"rsa2048\"\n\
                             private_key = \"\"\"\n-----BEGIN PRIVATE KEY-----\n";
        assert!(text.contains(rsa_key_start), "{}", *text);
        assert!(text.contains("tag = \"7E\""), "{}", *text);
        assert!(
            text.contains("tag = \"5FC102\"\nname = \"CHUID\""),
            "{}",
            *text
        );
    }

    #[test]
    fn defaults_apply_to_optional_fields() {
        let text = documented_example()
            .replace("label = \"Alice Example\"\n", "")
            .replace("extended_length = true\n", "")
            .replace("contactless = false\n", "");
        let image = CardImage::from_toml_str(&text).unwrap();
        assert_eq!(
            image.card,
            CardSettings {
                serial: 10_000_001,
                label: None,
                extended_length: true,
                contactless: false,
                quirks: Quirks::NONE,
            }
        );
    }

    #[test]
    fn refuses_other_files_and_versions() {
        let example = documented_example();
        assert!(matches!(
            parse_error(&example.replace("\"pivtap-card-image\"", "\"something-else\"")),
            ImageError::NotACardImage { found: Some(found) } if found == "\"something-else\""
        ));
        assert!(matches!(
            parse_error("title = \"a Cargo.toml perhaps\"\n"),
            ImageError::NotACardImage { found: None }
        ));
        assert!(matches!(
            parse_error(&example.replace("version = 1", "version = 2")),
            ImageError::UnsupportedVersion { found: Some(found) } if found == "2"
        ));
    }

    #[test]
    fn reports_toml_problems_with_their_line() {
        let example = documented_example();
        let pin_without_retries = example.replace(
            "retries_left = 3\nmax_retries = 3\n\n[puk]",
            "max_retries = 3\n\n[puk]",
        );
        let error = parse_error(&pin_without_retries);
        assert_eq!(
            error.to_string(),
            "line 12, column 1: missing field `retries_left`"
        );
        let unknown_field = example.replace(
            "contactless = false",
            "contactless = false\ncolour = \"blue\"",
        );
        assert_eq!(
            parse_error(&unknown_field).to_string(),
            "line 11, column 1: unknown field `colour`, expected one of \
             `serial`, `label`, `extended_length`, `contactless`, `quirks`"
        );
        assert!(matches!(
            parse_error("format = \"pivtap-card-image\"\nversion = "),
            ImageError::Toml {
                location: Some((2, _)),
                ..
            }
        ));
    }

    #[test]
    fn type_errors_never_quote_a_secret() {
        let example = documented_example();
        let unquoted_pin = example.replace("value = \"123456\"", "value = 918273");
        assert_eq!(
            parse_error(&unquoted_pin).to_string(),
            "line 13, column 9: expected a quoted string, found a number"
        );
        let broken_pin = example.replace("value = \"123456\"", "value = 91827x");
        let error = parse_error(&broken_pin).to_string();
        assert!(error.starts_with("line 13, column 9: "), "{error}");
        assert!(!error.contains("91827"), "{error}");
    }

    #[test]
    fn refuses_bad_pins_puks_and_counters() {
        let example = documented_example();
        assert!(matches!(
            parse_error(&example.replace("\"123456\"", "\"12345\"")),
            ImageError::InvalidPin(ReferenceDataError::PinLength { len: 5 })
        ));
        let error = parse_error(&example.replace("\"123456\"", "\"12a456\""));
        assert!(matches!(
            error,
            ImageError::InvalidPin(ReferenceDataError::PinNotNumeric)
        ));
        assert!(!error.to_string().contains("12a456"), "{error}");
        assert!(matches!(
            parse_error(&example.replace("\"12345678\"", "\"123456789\"")),
            ImageError::InvalidPuk(ReferenceDataError::PukLength { len: 9 })
        ));
        assert!(matches!(
            parse_error(&example.replacen("retries_left = 3", "retries_left = 4", 1)),
            ImageError::RetriesLeftAboveMax {
                table: "pin",
                retries_left: 4,
                max_retries: 3
            }
        ));
        let puk_counters = example.replace(
            "\"12345678\"\nretries_left = 3\nmax_retries = 3",
            "\"12345678\"\nretries_left = 0\nmax_retries = 16",
        );
        assert!(matches!(
            parse_error(&puk_counters),
            ImageError::MaxRetriesOutOfRange {
                table: "puk",
                max_retries: 16
            }
        ));
        let no_tries = example.replacen(
            "retries_left = 3\nmax_retries = 3",
            "retries_left = 0\nmax_retries = 0",
            1,
        );
        assert!(matches!(
            parse_error(&no_tries),
            ImageError::MaxRetriesOutOfRange {
                table: "pin",
                max_retries: 0
            }
        ));
    }

    #[test]
    fn refuses_bad_management_keys() {
        let example = documented_example();
        let algorithm = |name: &str| {
            example.replace("algorithm = \"3des\"", &format!("algorithm = \"{name}\""))
        };
        assert!(matches!(
            parse_error(&algorithm("blowfish")),
            ImageError::InvalidManagementKeyAlgorithm(_)
        ));
        assert!(matches!(
            parse_error(&algorithm("rsa2048")),
            ImageError::InvalidManagementKey(ManagementKeyError::UnsupportedAlgorithm { .. })
        ));
        assert!(matches!(
            parse_error(&algorithm("aes128")),
            ImageError::InvalidManagementKey(ManagementKeyError::KeyLength {
                expected: 16,
                actual: 24,
                ..
            })
        ));
        let error = parse_error(&example.replace("0102030405060708\"", "010203040506070Q\""));
        assert!(matches!(
            error,
            ImageError::InvalidManagementKey(ManagementKeyError::BadHex)
        ));
        assert!(!error.to_string().contains("0102"), "{error}");
    }

    #[test]
    fn refuses_bad_key_entries() {
        let example = documented_example();
        assert!(matches!(
            parse_error(&example.replace("slot = \"9a\"", "slot = \"9b\"")),
            ImageError::InvalidSlot { entry: 1, slot } if slot == "9b"
        ));
        assert!(matches!(
            parse_error(&example.replace("slot = \"9a\"", "slot = \"zz\"")),
            ImageError::InvalidSlot { entry: 1, .. }
        ));
        assert!(matches!(
            parse_error(&example.replace("algorithm = \"p256\"", "algorithm = \"ed25519\"")),
            ImageError::InvalidKeyAlgorithm { entry: 1, .. }
        ));
        assert!(matches!(
            parse_error(&example.replace("algorithm = \"p256\"", "algorithm = \"p384\"")),
            ImageError::KeyAlgorithmMismatch {
                entry: 1,
                slot: KeyReference::PivAuthentication,
                declared: Algorithm::EccP384,
                actual: Algorithm::EccP256
            }
        ));
        let error = parse_error(&example.replace("MIGHAgEAMBMGByqGSM49", "MIGHAgEAMBMGByqGSM4A"));
        assert!(
            matches!(error, ImageError::InvalidPrivateKey { entry: 1, .. }),
            "{error}"
        );
        assert!(!error.to_string().contains("MIGH"), "{error}");

        let key_entry = example
            .split("[[keys]]")
            .nth(1)
            .and_then(|rest| rest.split("[[objects]]").next())
            .unwrap()
            .to_owned();
        let twice = example.replace("[[objects]]", &format!("[[keys]]{key_entry}[[objects]]"));
        assert!(matches!(
            parse_error(&twice),
            ImageError::DuplicateSlot {
                slot: KeyReference::PivAuthentication
            }
        ));
    }

    #[test]
    fn refuses_bad_objects() {
        let example = documented_example();
        let with_tag = |tag: &str| example.replace("tag = \"5FC10C\"", &format!("tag = \"{tag}\""));
        // Two bytes is a valid (vendor) tag.
        let image = CardImage::from_toml_str(&with_tag("5FC1")).unwrap();
        assert_eq!(image.objects[0].tag, ObjectTag::Other(0x5FC1));
        for bad_tag in ["5FC10", "5FC1020A", "", "00", "tag"] {
            assert!(
                matches!(
                    parse_error(&with_tag(bad_tag)),
                    ImageError::InvalidObjectTag { entry: 1, ref tag } if tag == bad_tag
                ),
                "{bad_tag}"
            );
        }
        assert!(matches!(
            parse_error(&example.replace("wQEAwgEA/gA=", "wQEAwgEA/gA")),
            ImageError::InvalidObjectData {
                entry: 1,
                tag: ObjectTag::KeyHistory
            }
        ));
        let wrapped = example.replace(
            "data = \"wQEAwgEA/gA=\"",
            "data = \"\"\"\nwQEA\nwgEA/gA=\n\"\"\"",
        );
        let image = CardImage::from_toml_str(&wrapped).unwrap();
        assert_eq!(image.objects[0].data, [0xC1, 1, 0, 0xC2, 1, 0, 0xFE, 0]);
        let twice = example.replace(
            "data = \"wQEAwgEA/gA=\"",
            "data = \"wQEAwgEA/gA=\"\n\n[[objects]]\ntag = \"5fc10c\"\ndata = \"\"",
        );
        assert!(matches!(
            parse_error(&twice),
            ImageError::DuplicateObject {
                tag: ObjectTag::KeyHistory
            }
        ));
    }

    #[test]
    fn writing_checks_the_image_too() {
        let mut image = full_image();
        image.pin.retries_left = 6;
        assert!(matches!(
            image.to_toml_string(),
            Err(ImageError::RetriesLeftAboveMax { table: "pin", .. })
        ));

        let mut image = full_image();
        image.keys.push(rsa_entry().clone());
        assert!(matches!(
            image.to_toml_string(),
            Err(ImageError::DuplicateSlot {
                slot: KeyReference::DigitalSignature
            })
        ));

        let mut image = full_image();
        let mut entry = rsa_entry().clone();
        entry.slot = KeyReference::Pin;
        image.keys = vec![entry];
        assert!(matches!(
            image.to_toml_string(),
            Err(ImageError::InvalidSlot { entry: 1, .. })
        ));

        let mut image = full_image();
        image.objects.push(DataObject {
            tag: ObjectTag::Other(0x5FC102),
            data: vec![1],
        });
        assert!(matches!(
            image.validate(),
            Err(ImageError::DuplicateObject { .. })
        ));

        let mut image = full_image();
        image.objects = vec![DataObject {
            tag: ObjectTag::Other(0x0100_0000),
            data: vec![],
        }];
        assert!(matches!(
            image.validate(),
            Err(ImageError::InvalidObjectTag { entry: 1, .. })
        ));
    }

    #[test]
    fn debug_redacts_every_secret() {
        let image = full_image();
        let shown = format!("{image:?}");
        let pem_body = rsa_entry().private_key_pem().lines().nth(1).unwrap();
        for secret in ["24681357", "Zq9#x!2w", "00112233", pem_body] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("KeyEntry(9c, rsa2048, REDACTED)"), "{shown}");
        assert!(
            shown.contains("DataObject(5FC102 CHUID, 256 bytes)"),
            "{shown}"
        );
    }

    #[test]
    fn save_replaces_the_file_atomically_and_privately() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("card.toml");
        let mut image = full_image();
        image.save(&path).unwrap();
        assert_eq!(CardImage::load(&path).unwrap(), image);

        image.card.serial = 7;
        image.objects.clear();
        image.save(&path).unwrap();
        assert_eq!(CardImage::load(&path).unwrap(), image);
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            *image.to_toml_string().unwrap()
        );

        let names: Vec<_> = fs::read_dir(directory.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["card.toml"], "no temporary file may be left behind");

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn failed_save_keeps_the_old_file() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("card.toml");
        let image = full_image();
        image.save(&path).unwrap();
        let before = fs::read(&path).unwrap();

        let mut invalid = image.clone();
        invalid.puk.max_retries = 0;
        assert!(matches!(
            invalid.save(&path),
            Err(ImageError::MaxRetriesOutOfRange { .. })
        ));
        let missing_directory = directory.path().join("nowhere").join("card.toml");
        let error = image.save(&missing_directory).unwrap_err();
        assert!(matches!(&error, ImageError::Write { path, .. } if *path == missing_directory));
        assert!(error.to_string().contains("nowhere"), "{error}");
        assert_eq!(fs::read(&path).unwrap(), before);
        assert_eq!(fs::read_dir(directory.path()).unwrap().count(), 1);
    }

    #[test]
    fn load_names_the_file_in_errors() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("broken.toml");
        let text = full_image().to_toml_string().unwrap();
        fs::write(&path, &text[..text.len() / 2]).unwrap();
        let error = CardImage::load(&path).unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(&error, ImageError::InFile { path: in_path, .. } if *in_path == path),
            "{message}"
        );
        assert_eq!(message, format!("card image {}", path.display()));
        let cause = std::error::Error::source(&error)
            .map(ToString::to_string)
            .unwrap_or_default();
        assert!(cause.starts_with("line "), "{cause}");

        fs::write(&path, b"\xFF\xFE not text").unwrap();
        assert!(matches!(
            CardImage::load(&path),
            Err(ImageError::Read { .. })
        ));
        let missing = directory.path().join("missing.toml");
        let error = CardImage::load(&missing).unwrap_err();
        assert!(error.to_string().contains("missing.toml"), "{error}");
    }
}
