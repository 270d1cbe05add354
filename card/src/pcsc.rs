//! The PC/SC transport: cards in the system's readers, through pcscd (or WinSCard), as [`CardBackend`]s; reader listing; and the mapping of every PC/SC error to a [`TransportError`] a person can act on.

use std::ffi::CString;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use pcsc::{Disposition, Protocols, Scope, ShareMode, State};

use crate::transport::{CardBackend, CardTransaction, LinkCapabilities, TransportError};

/// A reader as [`PcscContext::list_readers`] found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReaderInfo {
    /// The reader's name, as PC/SC reports it (pass it to [`PcscCard::connect`]).
    pub name: String,
    /// Whether a card is in the reader (or on it) and answered the reset.
    pub card_present: bool,
    /// The card's Answer To Reset, when a card is present.
    pub atr: Option<Vec<u8>>,
    /// Whether the card present is reached over a contactless interface,
    /// judged from its ATR (see [`is_contactless_atr`]); `false` without a card.
    pub contactless: bool,
}

/// A connection to the smart card service that survives the service
/// restarting: an operation that finds the service gone (or its context
/// invalid) establishes a new context and tries once more, so the program
/// never needs a restart.
///
/// It may be shared between threads; a [`PcscCard`] keeps the context it was
/// connected with.
pub struct PcscContext {
    slot: Mutex<ContextSlot>,
}

impl PcscContext {
    /// Connects to the smart card service.
    ///
    /// # Errors
    /// [`TransportError::ServiceUnavailable`] when pcscd cannot be reached.
    pub fn establish() -> Result<Self, TransportError> {
        let context = pcsc::Context::establish(Scope::User).map_err(|e| map_error(e, None))?;
        Ok(PcscContext {
            slot: Mutex::new(ContextSlot {
                context: Some(context),
                generation: 0,
            }),
        })
    }

    /// The readers attached to the system, in the order PC/SC lists them,
    /// with whether each holds a card and the card's ATR. The PnP
    /// pseudo-reader is never listed.
    ///
    /// # Errors
    /// [`TransportError::ServiceUnavailable`] when pcscd cannot be reached,
    /// or the mapped PC/SC error.
    pub fn list_readers(&self) -> Result<Vec<ReaderInfo>, TransportError> {
        let readers = self
            .with_context(reader_states)
            .map_err(|error| map_error(error, None))?;
        Ok(readers
            .iter()
            .filter(|state| {
                !state
                    .event_state()
                    .intersects(State::UNKNOWN | State::IGNORE)
            })
            .map(|state| {
                let atr = card_atr(state.event_state(), state.atr());
                ReaderInfo {
                    name: state.name().to_string_lossy().into_owned(),
                    card_present: atr.is_some(),
                    contactless: atr.as_deref().is_some_and(is_contactless_atr),
                    atr,
                }
            })
            .collect())
    }

    /// Runs `operation` on the current context, establishing one first when
    /// there is none; when the service was lost, once more on a fresh context.
    fn with_context<T>(
        &self,
        operation: impl Fn(&pcsc::Context) -> Result<T, pcsc::Error>,
    ) -> Result<T, pcsc::Error> {
        let (context, generation) = self.current_context()?;
        match operation(&context) {
            Err(error) if is_service_loss(error) => {
                tracing::debug!(%error, "the smart card service was lost; reconnecting");
                self.forget_context(generation);
                operation(&self.current_context()?.0)
            }
            result => result,
        }
    }

    /// The context in use and its generation, established anew when the
    /// last one was lost.
    fn current_context(&self) -> Result<(pcsc::Context, u64), pcsc::Error> {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(context) = &slot.context {
            return Ok((context.clone(), slot.generation));
        }
        let context = pcsc::Context::establish(Scope::User)?;
        slot.context = Some(context.clone());
        slot.generation += 1;
        Ok((context, slot.generation))
    }

    /// Drops the context of `generation` so the next call establishes a new
    /// one; a context another thread already re-established is kept.
    fn forget_context(&self, generation: u64) {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.generation == generation {
            slot.context = None;
        }
    }
}

/// The context in use, and how many contexts were established before it.
struct ContextSlot {
    context: Option<pcsc::Context>,
    generation: u64,
}

/// Every reader's state, looked at once without waiting.
fn reader_states(context: &pcsc::Context) -> Result<Vec<pcsc::ReaderState>, pcsc::Error> {
    let mut retries_left = 2;
    loop {
        let mut states: Vec<pcsc::ReaderState> = context
            .list_readers_owned()?
            .into_iter()
            .filter(|name| name.as_c_str() != pcsc::PNP_NOTIFICATION())
            .map(|name| pcsc::ReaderState::new(name, State::UNAWARE))
            .collect();
        if states.is_empty() {
            return Ok(states);
        }
        match context.get_status_change(Duration::ZERO, &mut states) {
            // A reader left between listing and looking: list again.
            Err(pcsc::Error::UnknownReader) if retries_left > 0 => retries_left -= 1,
            result => return result.map(|()| states),
        }
    }
}

/// Whether an error means the service went away or was restarted, so the
/// context must be established again.
pub(crate) fn is_service_loss(error: pcsc::Error) -> bool {
    matches!(
        error,
        pcsc::Error::NoService | pcsc::Error::ServiceStopped | pcsc::Error::InvalidHandle
    )
}

/// The ATR of the card in a reader, when the state says a card is present
/// and answered the reset.
pub(crate) fn card_atr(state: State, atr: &[u8]) -> Option<Vec<u8>> {
    (state.contains(State::PRESENT) && !state.contains(State::MUTE) && !atr.is_empty())
        .then(|| atr.to_vec())
}

/// A card in a PC/SC reader, connected in shared mode with T=0 or T=1.
///
/// Dropping it disconnects with a card reset, so a PIN verified through it
/// does not stay verified for other programs.
pub struct PcscCard {
    card: pcsc::Card,
    reader: String,
    atr: Vec<u8>,
}

impl PcscCard {
    /// Connects to the card in `reader` (shared mode, T=0 or T=1).
    ///
    /// # Errors
    /// [`TransportError::NoCard`] for an empty reader,
    /// [`TransportError::ReaderUnavailable`] for an unknown reader,
    /// [`TransportError::SharingViolation`] when another program holds the
    /// card exclusively, or another mapped PC/SC error.
    pub fn connect(context: &PcscContext, reader: &str) -> Result<Self, TransportError> {
        // No reader's name holds a NUL.
        let reader_name = CString::new(reader).map_err(|_| TransportError::ReaderUnavailable {
            reader: reader.to_owned(),
        })?;
        let card = context
            .with_context(|context| {
                context.connect(&reader_name, ShareMode::Shared, Protocols::ANY)
            })
            .map_err(|error| map_error(error, Some(reader)))?;
        let atr = card
            .status2_owned()
            .map_err(|error| map_error(error, Some(reader)))?
            .atr()
            .to_vec();
        Ok(PcscCard {
            card,
            reader: reader.to_owned(),
            atr,
        })
    }

    /// The card's Answer To Reset, as read when it was connected.
    #[must_use]
    pub fn atr(&self) -> &[u8] {
        &self.atr
    }
}

impl CardBackend for PcscCard {
    fn transaction(&mut self) -> Result<Box<dyn CardTransaction + '_>, TransportError> {
        match self.card.transaction2() {
            Ok(transaction) => Ok(Box::new(PcscTransaction {
                transaction,
                reader: &self.reader,
                response: vec![0; pcsc::MAX_BUFFER_SIZE_EXTENDED],
            })),
            Err((card, error)) => {
                if error == pcsc::Error::ResetCard {
                    log_failed_reconnect(
                        card.reconnect(ShareMode::Shared, Protocols::ANY, Disposition::LeaveCard),
                        &self.reader,
                    );
                }
                Err(map_error(error, Some(&self.reader)))
            }
        }
    }

    fn capabilities(&self) -> LinkCapabilities {
        LinkCapabilities {
            extended_length: true,
            contactless: is_contactless_atr(&self.atr),
        }
    }

    fn name(&self) -> String {
        self.reader.clone()
    }
}

/// After another program reset the card, the connection is reconnected
/// (leaving the card as it is) so that the next transaction works, from a
/// fresh SELECT; if reconnecting fails, the next transaction reports why.
fn log_failed_reconnect(reconnected: Result<(), pcsc::Error>, reader: &str) {
    if let Err(error) = reconnected {
        tracing::debug!(%error, reader, "reconnecting after a card reset failed");
    }
}

/// A PC/SC transaction: no other program's APDUs reach the card until it
/// is dropped (`SCardEndTransaction`, leaving the card as it is).
struct PcscTransaction<'a> {
    transaction: pcsc::Transaction<'a>,
    reader: &'a str,
    response: Vec<u8>,
}

impl CardTransaction for PcscTransaction<'_> {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        match self.transaction.transmit(command, &mut self.response) {
            Ok(response) => answer_of(response),
            Err(error) => {
                if error == pcsc::Error::ResetCard {
                    let reconnected = self.transaction.reconnect(
                        ShareMode::Shared,
                        Protocols::ANY,
                        Disposition::LeaveCard,
                    );
                    log_failed_reconnect(reconnected, self.reader);
                }
                Err(map_error(error, Some(self.reader)))
            }
        }
    }
}

/// The card's answer to a command that PC/SC reports transmitted. A card always
/// answers at least SW1 SW2; an empty answer means none came: vpcd reports a card
/// whose connection closed in the middle of a command (the card was taken out)
/// that way, so it is [`TransportError::CardRemoved`].
fn answer_of(response: &[u8]) -> Result<Vec<u8>, TransportError> {
    if response.is_empty() {
        Err(TransportError::CardRemoved)
    } else {
        Ok(response.to_vec())
    }
}

/// Whether an ATR is one a PC/SC reader builds for a contactless card.
///
/// PC/SC Part 3 (Requirements for PC-Connected Interface Devices, v2.01.09,
/// §3.1.3.2.3) has the reader make up the ATR of a contactless card as
/// `3B 8n 80 01` followed by `n` historical bytes and the check byte TCK:
/// TS `3B`, T0 `8n` (only TD1 follows; `n` historical bytes), TD1 `80` (only
/// TD2 follows; T=0), TD2 `01` (nothing follows; T=1). For ISO 14443-4 cards
/// the historical bytes come from the ATS (type A) or ATQB (type B); storage
/// cards (MIFARE and the like) carry `80 4F 0C A0 00 00 03 06 ...`. The TCK
/// makes the exclusive-or of T0 to TCK zero; an ATR that breaks it was not
/// built this way.
#[must_use]
pub fn is_contactless_atr(atr: &[u8]) -> bool {
    let [0x3B, format @ 0x80..=0x8F, 0x80, 0x01, rest @ ..] = atr else {
        return false;
    };
    let historical = usize::from(format & 0x0F);
    rest.len() == historical + 1 && atr.iter().skip(1).fold(0, |check, byte| check ^ byte) == 0
}

/// Maps a PC/SC error to the [`TransportError`] that says what to do about
/// it; `reader` names the reader involved, when there is one.
#[must_use]
pub fn map_error(error: pcsc::Error, reader: Option<&str>) -> TransportError {
    use pcsc::Error as E;
    let reason = error.to_string();
    match error {
        E::NoService | E::ServiceStopped | E::InvalidHandle | E::Shutdown => {
            TransportError::ServiceUnavailable { reason }
        }
        E::NoReadersAvailable | E::UnknownReader | E::ReaderUnavailable => match reader {
            Some(reader) => TransportError::ReaderUnavailable {
                reader: reader.to_owned(),
            },
            None => TransportError::NoReaders,
        },
        E::NoSmartcard => TransportError::NoCard,
        // pcscd ends a transaction when its card leaves the reader; the next
        // command of that transaction then reports the transaction missing.
        E::RemovedCard | E::NotTransacted => TransportError::CardRemoved,
        E::ResetCard => TransportError::CardReset,
        E::SharingViolation => TransportError::SharingViolation,
        E::Timeout => TransportError::Timeout,
        E::UnresponsiveCard | E::UnpoweredCard | E::UnsupportedCard | E::InvalidAtr => {
            TransportError::CardUnresponsive { reason }
        }
        E::CommError | E::CommDataLost | E::ProtoMismatch => TransportError::Protocol { reason },
        _ => TransportError::Other { reason },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn atr(hex: &str) -> Vec<u8> {
        hex::decode(hex.replace(' ', "")).expect("test ATR is hex")
    }

    #[test]
    fn an_empty_answer_means_the_card_left() {
        assert_eq!(answer_of(&[]), Err(TransportError::CardRemoved));
        assert_eq!(answer_of(&[0x90, 0x00]), Ok(vec![0x90, 0x00]));
    }

    /// A YubiKey NEO tapped on a contactless reader: `3B 8C 80 01`, twelve
    /// historical bytes ("YubikeyNEOr3"), TCK `58`.
    const YUBIKEY_NEO_NFC: &str = "3B 8C 80 01 59 75 62 69 6B 65 79 4E 45 4F 72 33 58";
    /// A YubiKey 5 in a USB port (contact interface, T=1).
    const YUBIKEY_CONTACT: &str =
        "3B FD 13 00 00 81 31 FE 15 80 73 C0 21 C0 57 59 75 62 69 4B 65 79 40";
    /// A MIFARE Classic 1K, a contactless storage card (PC/SC Part 3 RID and
    /// standard/name bytes in the historical bytes).
    const MIFARE_CLASSIC: &str = "3B 8F 80 01 80 4F 0C A0 00 00 03 06 03 00 01 00 00 00 00 6A";

    #[test]
    fn contactless_atrs_are_recognised() {
        assert!(is_contactless_atr(&atr(YUBIKEY_NEO_NFC)));
        assert!(is_contactless_atr(&atr(MIFARE_CLASSIC)));
        // No historical bytes: just the four interface bytes and TCK.
        assert!(is_contactless_atr(&atr("3B 80 80 01 01")));
        // The ATR the vpcd tests give their cards.
        assert!(is_contactless_atr(&atr(
            "3B 88 80 01 00 00 00 00 00 00 00 00 09"
        )));
    }

    #[test]
    fn contact_and_malformed_atrs_are_not_contactless() {
        assert!(!is_contactless_atr(&atr(YUBIKEY_CONTACT)));
        assert!(!is_contactless_atr(&[]));
        assert!(!is_contactless_atr(&atr("3B 8C 80 01")));
        // A wrong TCK.
        let mut bad_check = atr(YUBIKEY_NEO_NFC);
        if let Some(tck) = bad_check.last_mut() {
            *tck ^= 0x01;
        }
        assert!(!is_contactless_atr(&bad_check));
        // One historical byte missing, and one too many.
        let neo = atr(YUBIKEY_NEO_NFC);
        let mut short = neo[..neo.len() - 2].to_vec();
        short.push(neo[neo.len() - 1] ^ neo[neo.len() - 2]);
        assert!(!is_contactless_atr(&short));
        assert!(!is_contactless_atr(&[neo.as_slice(), &[0x00]].concat()));
        // Inverse convention, another TD1 or TD2.
        assert!(!is_contactless_atr(&atr("3F 80 80 01 01")));
        assert!(!is_contactless_atr(&atr("3B 80 81 01 00")));
        assert!(!is_contactless_atr(&atr("3B 80 80 11 11")));
    }

    #[test]
    fn every_interesting_error_maps_to_its_own_variant() {
        let reader = Some("Virtual PCD 00 00");
        let unavailable = TransportError::ReaderUnavailable {
            reader: "Virtual PCD 00 00".to_owned(),
        };
        let cases = [
            (pcsc::Error::NoSmartcard, TransportError::NoCard),
            (pcsc::Error::RemovedCard, TransportError::CardRemoved),
            (pcsc::Error::NotTransacted, TransportError::CardRemoved),
            (pcsc::Error::ResetCard, TransportError::CardReset),
            (
                pcsc::Error::SharingViolation,
                TransportError::SharingViolation,
            ),
            (pcsc::Error::Timeout, TransportError::Timeout),
            (pcsc::Error::UnknownReader, unavailable.clone()),
            (pcsc::Error::ReaderUnavailable, unavailable.clone()),
            (pcsc::Error::NoReadersAvailable, unavailable),
        ];
        for (error, expected) in cases {
            assert_eq!(map_error(error, reader), expected, "{error:?}");
        }
        assert_eq!(
            map_error(pcsc::Error::NoReadersAvailable, None),
            TransportError::NoReaders
        );
    }

    #[test]
    fn service_errors_say_how_to_start_pcscd() {
        for error in [
            pcsc::Error::NoService,
            pcsc::Error::ServiceStopped,
            pcsc::Error::InvalidHandle,
        ] {
            let mapped = map_error(error, None);
            assert_eq!(
                mapped,
                TransportError::ServiceUnavailable {
                    reason: error.to_string()
                }
            );
            assert!(
                mapped.to_string().contains("systemctl start pcscd"),
                "{mapped}"
            );
        }
    }

    #[test]
    fn card_and_link_failures_keep_the_pcsc_text() {
        let mapped = map_error(pcsc::Error::UnresponsiveCard, Some("reader"));
        assert_eq!(
            mapped,
            TransportError::CardUnresponsive {
                reason: "The smart card is not responding to a reset".to_owned()
            }
        );
        assert!(
            mapped.to_string().contains("insert or tap it again"),
            "{mapped}"
        );
        assert_eq!(
            map_error(pcsc::Error::CommError, None),
            TransportError::Protocol {
                reason: pcsc::Error::CommError.to_string()
            }
        );
        let other = map_error(pcsc::Error::InsufficientBuffer, None);
        assert_eq!(
            other,
            TransportError::Other {
                reason: pcsc::Error::InsufficientBuffer.to_string()
            }
        );
    }

    #[test]
    fn only_service_failures_call_for_a_new_context() {
        assert!(is_service_loss(pcsc::Error::NoService));
        assert!(is_service_loss(pcsc::Error::ServiceStopped));
        assert!(is_service_loss(pcsc::Error::InvalidHandle));
        assert!(!is_service_loss(pcsc::Error::NoSmartcard));
        assert!(!is_service_loss(pcsc::Error::Cancelled));
        assert!(!is_service_loss(pcsc::Error::Timeout));
    }

    #[test]
    fn a_card_counts_as_present_only_with_an_answer_to_reset() {
        let neo = atr(YUBIKEY_NEO_NFC);
        assert_eq!(
            card_atr(State::PRESENT | State::INUSE, &neo),
            Some(neo.clone())
        );
        assert_eq!(card_atr(State::EMPTY, &neo), None);
        assert_eq!(card_atr(State::PRESENT | State::MUTE, &neo), None);
        assert_eq!(card_atr(State::PRESENT, &[]), None);
    }
}
