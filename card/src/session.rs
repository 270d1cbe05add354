//! The typed PIV session API: what a host does with a PIV card, over any transport.

use pivtap_apdu::piv::objects::apt::ApplicationPropertyTemplate;
use pivtap_apdu::piv::objects::auth_template::AuthTemplate;
use pivtap_apdu::piv::objects::certificate::CertificateObject;
use pivtap_apdu::piv::objects::chuid::Chuid;
use pivtap_apdu::piv::objects::discovery::Discovery;
use pivtap_apdu::piv::objects::metadata::Metadata;
use pivtap_apdu::piv::objects::public_key::PublicKey;
use pivtap_apdu::piv::{Algorithm, KeyReference, ObjectTag, Pin, Puk, commands};
use pivtap_apdu::{CommandApdu, ResponseApdu, StatusWord, TlvError, tlv};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::PivError;
use crate::exchange::{self, ExchangeStats, Link};
use crate::management_key::ManagementKey;
use crate::signature::{CardSignature, JwsAlgorithm};
use crate::transport::{CardBackend, CardTransaction};

/// What an empty VERIFY reports about the PIN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinStatus {
    /// The PIN is verified in this card session.
    Verified,
    /// Not verified; this many tries are left.
    RetriesLeft(u8),
    /// Blocked.
    Blocked,
}

/// A session with a card's PIV application, inside one card transaction:
/// no other program can send APDUs until it is dropped.
pub struct PivSession<'a> {
    transaction: Box<dyn CardTransaction + 'a>,
    link: Link,
}

impl<'a> PivSession<'a> {
    /// Begins a transaction on the card and SELECTs the PIV application.
    ///
    /// # Errors
    /// [`PivError::NoPivApplication`] when the card has none, or a transport error.
    pub fn open(backend: &'a mut dyn CardBackend) -> Result<Self, PivError> {
        let mut session = Self::without_select(backend)?;
        session.select()?;
        Ok(session)
    }

    /// Begins a transaction without selecting anything (for cards already
    /// selected, or to select by hand).
    ///
    /// # Errors
    /// A transport error.
    pub fn without_select(backend: &'a mut dyn CardBackend) -> Result<Self, PivError> {
        let link = Link::new(backend.capabilities());
        let transaction = backend.transaction()?;
        Ok(PivSession { transaction, link })
    }

    /// APDU and byte counts of this session so far.
    #[must_use]
    pub fn stats(&self) -> ExchangeStats {
        self.link.stats()
    }

    fn transmit(&mut self, command: &CommandApdu) -> Result<ResponseApdu, PivError> {
        Ok(exchange::send(
            self.transaction.as_mut(),
            &mut self.link,
            command,
        )?)
    }

    /// Sends a command and returns its data on `9000`; other status words
    /// become the matching [`PivError`].
    fn run(&mut self, command: &CommandApdu, operation: &'static str) -> Result<Vec<u8>, PivError> {
        let response = self.transmit(command)?;
        match response.status() {
            StatusWord::Success => Ok(response.into_data()),
            StatusWord::SecurityStatusNotSatisfied => Err(PivError::AccessDenied {
                operation,
                requirement: "the PIN or management key must be presented first (or the interface does not allow it)",
            }),
            status => Err(PivError::Card { operation, status }),
        }
    }

    /// SELECT the PIV application (SP 800-73-4 Part 2 §3.1.1).
    ///
    /// # Errors
    /// [`PivError::NoPivApplication`] on `6A82`.
    pub fn select(&mut self) -> Result<ApplicationPropertyTemplate, PivError> {
        let response = self.transmit(&commands::select())?;
        match response.status() {
            StatusWord::Success => ApplicationPropertyTemplate::parse(response.data())
                .map_err(|source| malformed("application property template", source)),
            StatusWord::NotFound => Err(PivError::NoPivApplication),
            status => Err(PivError::Card {
                operation: "select the PIV application",
                status,
            }),
        }
    }

    /// GET DATA: the object as the card sends it, wrapper included.
    fn get_data(&mut self, object: ObjectTag) -> Result<Vec<u8>, PivError> {
        let response = self.transmit(&commands::get_data(object))?;
        match response.status() {
            StatusWord::Success => Ok(response.into_data()),
            StatusWord::NotFound => Err(PivError::ObjectNotFound { object }),
            StatusWord::SecurityStatusNotSatisfied => Err(PivError::AccessDenied {
                operation: "read the object",
                requirement: "the PIN must be verified first, or the object is not readable over this interface",
            }),
            status => Err(PivError::Card {
                operation: "read a data object",
                status,
            }),
        }
    }

    /// Reads a data object and returns its content, without the wrapper
    /// (`53`, or the object's own tag for Discovery and the BIT group).
    ///
    /// # Errors
    /// [`PivError::ObjectNotFound`] when absent.
    pub fn read_object(&mut self, object: ObjectTag) -> Result<Vec<u8>, PivError> {
        let data = self.get_data(object)?;
        tlv::expect(&data, object.wire_tag())
            .map(<[u8]>::to_vec)
            .map_err(|source| malformed("data object", source))
    }

    /// The CHUID (SP 800-73-4 Part 1 §3.1.2).
    ///
    /// # Errors
    /// [`PivError::ObjectNotFound`] or [`PivError::Malformed`].
    pub fn chuid(&mut self) -> Result<Chuid, PivError> {
        let content = self.read_object(ObjectTag::Chuid)?;
        Chuid::parse(&content).map_err(|source| malformed("CHUID", source))
    }

    /// The Discovery object (SP 800-73-4 Part 1 §3.3.2).
    ///
    /// # Errors
    /// [`PivError::ObjectNotFound`] or [`PivError::Malformed`].
    pub fn discovery(&mut self) -> Result<Discovery, PivError> {
        let data = self.get_data(ObjectTag::Discovery)?;
        Discovery::parse(&data).map_err(|source| malformed("Discovery object", source))
    }

    /// Writes the Discovery object; needs the management key.
    ///
    /// # Errors
    /// As [`Self::put_object`].
    pub fn put_discovery(&mut self, discovery: &Discovery) -> Result<(), PivError> {
        let encoded = discovery.encode();
        let content = tlv::expect(&encoded, ObjectTag::Discovery.tag())
            .map_err(|source| malformed("Discovery object", source))?;
        self.put_object(ObjectTag::Discovery, content)
    }

    /// The card's serial number (GET SERIAL, a YubiKey extension), or `None`
    /// when the card does not offer it.
    ///
    /// # Errors
    /// [`PivError::Card`] for unexpected answers.
    pub fn serial(&mut self) -> Result<Option<u32>, PivError> {
        let response = self.transmit(&commands::get_serial())?;
        match (response.status(), response.data()) {
            (StatusWord::Success, [a, b, c, d]) => Ok(Some(u32::from_be_bytes([*a, *b, *c, *d]))),
            (StatusWord::InstructionNotSupported | StatusWord::ClassNotSupported, _) => Ok(None),
            (status, _) => Err(PivError::Card {
                operation: "read the serial number",
                status,
            }),
        }
    }

    /// Metadata of a key reference (GET METADATA, a YubiKey extension), or
    /// `None` when the card does not offer it.
    ///
    /// # Errors
    /// [`PivError::Malformed`] or [`PivError::Card`].
    pub fn metadata(&mut self, reference: KeyReference) -> Result<Option<Metadata>, PivError> {
        let response = self.transmit(&commands::get_metadata(reference))?;
        match response.status() {
            StatusWord::Success => Metadata::parse(response.data())
                .map(Some)
                .map_err(|source| malformed("metadata", source)),
            StatusWord::InstructionNotSupported
            | StatusWord::ClassNotSupported
            | StatusWord::ReferencedDataNotFound => Ok(None),
            status => Err(PivError::Card {
                operation: "read metadata",
                status,
            }),
        }
    }

    /// The PUK's tries left, from metadata: standard PIV has no way to ask
    /// without spending a try, so `None` on cards without GET METADATA.
    ///
    /// # Errors
    /// As [`Self::metadata`].
    pub fn puk_status(&mut self) -> Result<Option<PinStatus>, PivError> {
        Ok(self
            .metadata(KeyReference::Puk)?
            .and_then(|m| m.retries)
            .map(|(_, remaining)| match remaining {
                0 => PinStatus::Blocked,
                n => PinStatus::RetriesLeft(n),
            }))
    }

    /// The DER certificate of a key slot (decompressed if the card stores it gzipped).
    ///
    /// # Errors
    /// [`PivError::ObjectNotFound`] when the slot has no certificate.
    pub fn certificate(&mut self, slot: KeyReference) -> Result<Vec<u8>, PivError> {
        let object = slot.certificate_object().ok_or(PivError::NoKey { slot })?;
        let content = self.read_object(object)?;
        CertificateObject::parse(&content)
            .map(|c| c.certificate_der)
            .map_err(|source| malformed("certificate object", source))
    }

    /// The PIN's state, without spending a try (empty VERIFY, Part 2 §3.2.1).
    ///
    /// # Errors
    /// [`PivError::Card`] for unexpected answers.
    pub fn pin_status(&mut self) -> Result<PinStatus, PivError> {
        let response = self.transmit(&commands::verify_status(KeyReference::Pin))?;
        match response.status() {
            StatusWord::Success => Ok(PinStatus::Verified),
            StatusWord::RetriesLeft(0) | StatusWord::AuthenticationBlocked => {
                Ok(PinStatus::Blocked)
            }
            StatusWord::RetriesLeft(n) => Ok(PinStatus::RetriesLeft(n)),
            StatusWord::SecurityStatusNotSatisfied => Err(PivError::AccessDenied {
                operation: "query the PIN status",
                requirement: "the card does not allow PIN operations on its current interface \
                              (contactless without secure messaging); use a contact reader",
            }),
            status => Err(PivError::Card {
                operation: "query the PIN status",
                status,
            }),
        }
    }

    /// Tries left for the PIN (`None` when it is verified right now).
    ///
    /// # Errors
    /// As [`Self::pin_status`].
    pub fn pin_retries(&mut self) -> Result<Option<u8>, PivError> {
        Ok(match self.pin_status()? {
            PinStatus::Verified => None,
            PinStatus::RetriesLeft(n) => Some(n),
            PinStatus::Blocked => Some(0),
        })
    }

    /// VERIFY the PIN (Part 2 §3.2.1).
    ///
    /// # Errors
    /// [`PivError::WrongPin`] with the tries left, or [`PivError::PinBlocked`].
    #[tracing::instrument(level = "debug", skip_all)]
    pub fn verify_pin(&mut self, pin: &Pin) -> Result<(), PivError> {
        let response = self.transmit(&commands::verify_pin(KeyReference::Pin, pin))?;
        reference_data_result(response.status(), "verify the PIN", false)
    }

    /// Forgets the PIN's verified state (VERIFY with P1 `FF`).
    ///
    /// # Errors
    /// [`PivError::Card`] for unexpected answers.
    pub fn reset_pin_status(&mut self) -> Result<(), PivError> {
        self.run(
            &commands::verify_reset(KeyReference::Pin),
            "reset the PIN status",
        )
        .map(drop)
    }

    /// Logs the PIN out before letting go of the card: VERIFY with P1 `FF`
    /// ([`Self::reset_pin_status`]). Some cards keep a verified PIN across
    /// a card reset, so a reset alone could leave a badge PIN-verified for
    /// the next program; cards without the command refuse it, and a refusal
    /// is no error here (the reset that follows is all such a card needs).
    /// Returns whether the card confirmed the log-out.
    ///
    /// # Errors
    /// Only a transport or exchange failure (the card left, the reader went).
    pub fn log_out_pin(&mut self) -> Result<bool, PivError> {
        match self.reset_pin_status() {
            Ok(()) => Ok(true),
            Err(PivError::Transport(error)) => Err(PivError::Transport(error)),
            Err(PivError::Exchange(error)) => Err(PivError::Exchange(error)),
            Err(refused) => {
                tracing::debug!(error = %refused, "the card did not log the PIN out");
                Ok(false)
            }
        }
    }

    /// CHANGE REFERENCE DATA for the PIN (Part 2 §3.2.2).
    ///
    /// # Errors
    /// [`PivError::WrongPin`], [`PivError::PinBlocked`], or [`PivError::Card`]
    /// when the card refuses the new PIN.
    #[tracing::instrument(level = "debug", skip_all)]
    pub fn change_pin(&mut self, current: &Pin, new: &Pin) -> Result<(), PivError> {
        let response = self.transmit(&commands::change_pin(current, new))?;
        reference_data_result(response.status(), "change the PIN", false)
    }

    /// CHANGE REFERENCE DATA for the PUK (Part 2 §3.2.2).
    ///
    /// # Errors
    /// [`PivError::WrongPuk`] or [`PivError::PukBlocked`].
    #[tracing::instrument(level = "debug", skip_all)]
    pub fn change_puk(&mut self, current: &Puk, new: &Puk) -> Result<(), PivError> {
        let response = self.transmit(&commands::change_puk(current, new))?;
        reference_data_result(response.status(), "change the PUK", true)
    }

    /// RESET RETRY COUNTER (Part 2 §3.2.3): unblocks the PIN with the PUK and sets a new PIN.
    ///
    /// # Errors
    /// [`PivError::WrongPuk`] or [`PivError::PukBlocked`].
    #[tracing::instrument(level = "debug", skip_all)]
    pub fn unblock_pin(&mut self, puk: &Puk, new_pin: &Pin) -> Result<(), PivError> {
        let response = self.transmit(&commands::reset_retry_counter(puk, new_pin))?;
        reference_data_result(response.status(), "unblock the PIN", true)
    }

    /// RESET of the PIV application (YubiKey extension, INS `FB`): erases
    /// every key, certificate and data object and restores the factory PIN,
    /// PUK and management key. Cards accept it only while both the PIN and
    /// the PUK are blocked.
    ///
    /// # Errors
    /// [`PivError::Card`] with [`StatusWord::ConditionsNotSatisfied`] (`6985`)
    /// while the PIN or the PUK is not blocked, with
    /// [`StatusWord::InstructionNotSupported`] (`6D00`) on cards without it.
    #[tracing::instrument(level = "debug", skip_all)]
    pub fn reset_application(&mut self) -> Result<(), PivError> {
        self.run(&commands::reset_application(), "reset the PIV application")
            .map(drop)
    }

    /// Signs `message` with the key in `slot` and returns the JWS signature
    /// bytes: for RSA the host hashes and builds the PKCS#1 v1.5 block and the
    /// card raises it to its private exponent; for ECDSA the card signs the
    /// hash and the DER answer becomes `r || s`. The PIN must be verified
    /// (for 9C just before, every time), except for 9E.
    ///
    /// # Errors
    /// [`PivError::AccessDenied`] without the PIN, [`PivError::NoKey`],
    /// [`PivError::Signature`] when `algorithm` does not fit `key`.
    #[tracing::instrument(level = "debug", skip(self, message), fields(message_len = message.len()))]
    pub fn sign(
        &mut self,
        slot: KeyReference,
        key: Algorithm,
        algorithm: JwsAlgorithm,
        message: &[u8],
    ) -> Result<Vec<u8>, PivError> {
        algorithm.check_card_key(key)?;
        let key_len = key.key_len();
        let input = algorithm.card_input(message, key_len);
        let output =
            self.general_authenticate(key, slot, &commands::sign(key, slot, &input), "sign")?;
        Ok(algorithm.jose_signature(&output, key_len)?)
    }

    /// ECDH with the key in `slot` (usually 9D) and a peer's uncompressed point.
    ///
    /// # Errors
    /// As [`Self::sign`].
    pub fn key_agreement(
        &mut self,
        slot: KeyReference,
        key: Algorithm,
        peer_point: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, PivError> {
        let command = commands::key_agreement(key, slot, peer_point);
        self.general_authenticate(key, slot, &command, "agree on a key")
            .map(Zeroizing::new)
    }

    fn general_authenticate(
        &mut self,
        key: Algorithm,
        slot: KeyReference,
        command: &CommandApdu,
        operation: &'static str,
    ) -> Result<Vec<u8>, PivError> {
        let response = self.transmit(command)?;
        match response.status() {
            StatusWord::Success => {}
            StatusWord::ReferencedDataNotFound => return Err(PivError::NoKey { slot }),
            StatusWord::SecurityStatusNotSatisfied => {
                return Err(PivError::AccessDenied {
                    operation,
                    requirement: if slot == KeyReference::DigitalSignature {
                        "the PIN must be verified right before each signature with key 9C"
                    } else {
                        "the PIN must be verified first (or the interface does not allow this key)"
                    },
                });
            }
            StatusWord::IncorrectP1P2 => {
                return Err(PivError::Card {
                    operation,
                    status: StatusWord::IncorrectP1P2,
                })
                .inspect_err(
                    |_| tracing::debug!(%key, %slot, "card refused the algorithm for this slot"),
                );
            }
            status => return Err(PivError::Card { operation, status }),
        }
        let template = AuthTemplate::parse(response.data())
            .map_err(|source| malformed("authentication response", source))?;
        template
            .response
            .bytes()
            .map(<[u8]>::to_vec)
            .ok_or_else(|| malformed("authentication response", missing_response()))
    }

    /// Authenticates with the card management key (SP 800-73-4 Part 2
    /// Appendix A): mutual authentication, where the host decrypts the
    /// card's witness, the card encrypts the host's challenge, and each side
    /// checks the other.
    ///
    /// The second step goes in the form OpenSC and yubico-piv-tool send,
    /// `7C { 80 witness, 81 challenge }`. Cards differ in which of the
    /// spec's forms they take, so a refusal of a form (`6A80` or `6A86`) is
    /// met with the other form, once each, never in a loop:
    /// - second step refused: the mutual authentication again, with the
    ///   response asked for explicitly (`7C { 82 00, 80 .., 81 .. }`);
    /// - first step (`7C { 80 00 }`) refused: the one-way external
    ///   authentication (`7C { 81 00 }`, then `7C { 82 .. }`), in which the
    ///   card does not prove that it holds the key.
    ///
    /// # Errors
    /// [`PivError::ManagementKeyRejected`] or [`PivError::CardAuthenticationFailed`].
    #[tracing::instrument(level = "debug", skip_all)]
    pub fn authenticate_management_key(&mut self, key: &ManagementKey) -> Result<(), PivError> {
        match self.mutual_authentication(key, WitnessAnswer::Plain)? {
            MutualOutcome::Authenticated => Ok(()),
            MutualOutcome::WitnessRequestRefused => {
                tracing::debug!(
                    "the card refused the mutual authentication's first step; \
                     trying the one-way external authentication"
                );
                self.external_authentication(key)
            }
            MutualOutcome::AnswerRefused(_) => {
                tracing::debug!(
                    "the card refused `7C {{ 80, 81 }}`; trying `7C {{ 82 00, 80, 81 }}`"
                );
                match self.mutual_authentication(key, WitnessAnswer::RequestingResponse)? {
                    MutualOutcome::Authenticated => Ok(()),
                    MutualOutcome::WitnessRequestRefused => Err(PivError::ManagementKeyRejected),
                    MutualOutcome::AnswerRefused(status) => Err(PivError::Card {
                        operation: "finish management key authentication",
                        status,
                    }),
                }
            }
        }
    }

    /// One run of the mutual authentication (Appendix A.1), with the second
    /// step in the form `answer`. A refusal of a form is an outcome, for
    /// [`Self::authenticate_management_key`] to try the other form.
    fn mutual_authentication(
        &mut self,
        key: &ManagementKey,
        answer: WitnessAnswer,
    ) -> Result<MutualOutcome, PivError> {
        let algorithm = key.algorithm();
        let request = commands::management_witness_request(algorithm);
        let Some(template) = self.management_first_step(&request, "management key witness")? else {
            return Ok(MutualOutcome::WitnessRequestRefused);
        };
        let encrypted_witness = template
            .witness
            .bytes()
            .ok_or_else(|| malformed("management key witness", missing(0x80)))?;
        let witness = key.decrypt_block(encrypted_witness)?;
        let mut challenge = Zeroizing::new(vec![0u8; key.block_len()]);
        rand::fill(challenge.as_mut_slice());
        let command = match answer {
            WitnessAnswer::Plain => {
                commands::management_witness_response(algorithm, &witness, &challenge)
            }
            WitnessAnswer::RequestingResponse => {
                commands::management_witness_response_requesting(algorithm, &witness, &challenge)
            }
        };
        let response = self.transmit(&command)?;
        match response.status() {
            StatusWord::Success => {}
            StatusWord::SecurityStatusNotSatisfied => return Err(PivError::ManagementKeyRejected),
            status if is_form_refusal(status) => return Ok(MutualOutcome::AnswerRefused(status)),
            status => {
                return Err(PivError::Card {
                    operation: "finish management key authentication",
                    status,
                });
            }
        }
        let template = AuthTemplate::parse(response.data())
            .map_err(|source| malformed("management key response", source))?;
        let expected = key.encrypt_block(&challenge)?;
        match template.response.bytes() {
            Some(answer) if bool::from(answer.ct_eq(expected.as_slice())) => {
                Ok(MutualOutcome::Authenticated)
            }
            _ => Err(PivError::CardAuthenticationFailed),
        }
    }

    /// Sends the first step of a management-key authentication and parses
    /// the card's template (`what` names it in errors); `None` when the card
    /// refuses the step's form ([`is_form_refusal`]).
    fn management_first_step(
        &mut self,
        request: &CommandApdu,
        what: &'static str,
    ) -> Result<Option<AuthTemplate>, PivError> {
        let response = self.transmit(request)?;
        match response.status() {
            StatusWord::Success => AuthTemplate::parse(response.data())
                .map(Some)
                .map_err(|source| malformed(what, source)),
            status if is_form_refusal(status) => Ok(None),
            StatusWord::ReferencedDataNotFound => Err(PivError::ManagementKeyRejected),
            status => Err(PivError::Card {
                operation: "start management key authentication",
                status,
            }),
        }
    }

    /// The one-way external authentication (Appendix A.2): the card's
    /// challenge, encrypted by the host. The card proves nothing.
    fn external_authentication(&mut self, key: &ManagementKey) -> Result<(), PivError> {
        let algorithm = key.algorithm();
        let request = commands::management_challenge_request(algorithm);
        let template = self
            .management_first_step(&request, "management key challenge")?
            .ok_or(PivError::ManagementKeyRejected)?;
        let challenge = template
            .challenge
            .bytes()
            .ok_or_else(|| malformed("management key challenge", missing(0x81)))?;
        let encrypted = key.encrypt_block(challenge)?;
        let response = self.transmit(&commands::management_challenge_response(
            algorithm, &encrypted,
        ))?;
        match response.status() {
            StatusWord::Success => Ok(()),
            StatusWord::SecurityStatusNotSatisfied => Err(PivError::ManagementKeyRejected),
            status => Err(PivError::Card {
                operation: "finish management key authentication",
                status,
            }),
        }
    }

    /// GENERATE ASYMMETRIC KEY PAIR in `slot` (Part 2 §3.3.2); needs the
    /// management key. Returns the new public key.
    ///
    /// # Errors
    /// [`PivError::AccessDenied`] without the management key.
    pub fn generate_key(
        &mut self,
        slot: KeyReference,
        algorithm: Algorithm,
    ) -> Result<PublicKey, PivError> {
        let data = self.run(
            &commands::generate_key_pair(slot, algorithm),
            "generate a key",
        )?;
        PublicKey::parse_for(algorithm, &data).map_err(|source| malformed("public key", source))
    }

    /// Writes a data object (PUT DATA, Part 2 §3.3.1); needs the management key.
    ///
    /// # Errors
    /// [`PivError::AccessDenied`] without the management key.
    pub fn put_object(&mut self, object: ObjectTag, content: &[u8]) -> Result<(), PivError> {
        self.run(&commands::put_data(object, content), "write a data object")
            .map(drop)
    }

    /// Stores a certificate for `slot` (uncompressed); needs the management key.
    ///
    /// # Errors
    /// As [`Self::put_object`].
    pub fn put_certificate(
        &mut self,
        slot: KeyReference,
        certificate_der: &[u8],
    ) -> Result<(), PivError> {
        let object = slot.certificate_object().ok_or(PivError::NoKey { slot })?;
        self.put_object(
            object,
            &CertificateObject::new(certificate_der.to_vec()).encode(),
        )
    }
}

fn malformed(what: &'static str, source: TlvError) -> PivError {
    PivError::Malformed { what, source }
}

fn missing_response() -> TlvError {
    missing(0x82)
}

fn missing(tag: u32) -> TlvError {
    TlvError::Missing {
        tag: tlv::tag_hex(tag),
    }
}

/// The form of the mutual authentication's second step.
#[derive(Clone, Copy)]
enum WitnessAnswer {
    /// `7C { 80 witness, 81 challenge }`, as OpenSC and yubico-piv-tool send it.
    Plain,
    /// `7C { 82 00, 80 witness, 81 challenge }`: the response asked for explicitly.
    RequestingResponse,
}

/// How one run of the mutual authentication ended, short of an error.
enum MutualOutcome {
    /// Both sides proved they hold the key.
    Authenticated,
    /// The card refused the first step's form (`7C { 80 00 }`).
    WitnessRequestRefused,
    /// The card refused the second step's form, with this status word.
    AnswerRefused(StatusWord),
}

/// Whether a card's answer refuses the form of a GENERAL AUTHENTICATE
/// template (`6A80` wrong data, `6A86` wrong P1-P2) rather than the key.
fn is_form_refusal(status: StatusWord) -> bool {
    matches!(
        status,
        StatusWord::IncorrectData | StatusWord::IncorrectP1P2
    )
}

/// Maps the answer to VERIFY, CHANGE REFERENCE DATA or RESET RETRY COUNTER.
fn reference_data_result(
    status: StatusWord,
    operation: &'static str,
    puk: bool,
) -> Result<(), PivError> {
    match (status, puk) {
        (StatusWord::Success, _) => Ok(()),
        (StatusWord::RetriesLeft(0) | StatusWord::AuthenticationBlocked, false) => {
            Err(PivError::PinBlocked)
        }
        (StatusWord::RetriesLeft(0) | StatusWord::AuthenticationBlocked, true) => {
            Err(PivError::PukBlocked)
        }
        (StatusWord::RetriesLeft(retries_left), false) => Err(PivError::WrongPin {
            retries_left: Some(retries_left),
        }),
        (StatusWord::RetriesLeft(retries_left), true) => Err(PivError::WrongPuk {
            retries_left: Some(retries_left),
        }),
        // A plain `6300`: the check failed and a try was spent, but the card
        // does not say how many are left (some third-party cards).
        (StatusWord::VerificationFailed, false) => Err(PivError::WrongPin { retries_left: None }),
        (StatusWord::VerificationFailed, true) => Err(PivError::WrongPuk { retries_left: None }),
        (StatusWord::SecurityStatusNotSatisfied, _) => Err(PivError::AccessDenied {
            operation,
            requirement: "the card does not allow this on its current interface \
                          (contactless without secure messaging); use a contact reader",
        }),
        (status, _) => Err(PivError::Card { operation, status }),
    }
}
