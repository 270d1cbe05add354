//! Shared pieces of pivtap's fuzz targets: splitting one input into frames, and a card that answers fuzz bytes.
#![forbid(unsafe_code)]

use pivtap_apdu::piv::{Algorithm, KeyReference, ObjectTag, Pin, Puk};
use pivtap_card::csr::certificate_request;
use pivtap_card::{
    CardBackend, CardTransaction, JwsAlgorithm, LinkCapabilities, ManagementKey, PivError,
    PivSession, TransportError,
};

/// Splits an input into frames: each a two-byte big-endian length, then that many bytes (fewer
/// at the end of the input). The seed generator (`fuzz/seeds.py`) writes the same format.
#[derive(Debug, Clone)]
pub struct Frames<'a> {
    rest: &'a [u8],
}

impl<'a> Frames<'a> {
    /// Frames of `input`.
    #[must_use]
    pub fn new(input: &'a [u8]) -> Self {
        Frames { rest: input }
    }

    /// Whether every byte was used.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (length, rest) = self.rest.split_first_chunk::<2>()?;
        let length = usize::from(u16::from_be_bytes(*length)).min(rest.len());
        let (frame, rest) = rest.split_at(length);
        self.rest = rest;
        Some(frame)
    }
}

/// A card that answers every command APDU with the next frame of the fuzz input, and is
/// "removed" when the input runs out. It records how many commands it was sent.
#[derive(Debug)]
pub struct ScriptedCard<'a> {
    answers: Frames<'a>,
    capabilities: LinkCapabilities,
    /// Commands received so far.
    pub commands: usize,
}

impl<'a> ScriptedCard<'a> {
    /// A card answering with the frames of `input`.
    #[must_use]
    pub fn new(input: &'a [u8], capabilities: LinkCapabilities) -> Self {
        ScriptedCard {
            answers: Frames::new(input),
            capabilities,
            commands: 0,
        }
    }

    /// Whether answers are left.
    #[must_use]
    pub fn has_answers(&self) -> bool {
        !self.answers.is_empty()
    }
}

struct ScriptedTransaction<'t, 'a> {
    card: &'t mut ScriptedCard<'a>,
}

impl CardTransaction for ScriptedTransaction<'_, '_> {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>, TransportError> {
        assert!(
            command.len() >= 4,
            "the host sent a command without a header"
        );
        self.card.commands += 1;
        self.card
            .answers
            .next()
            .map(<[u8]>::to_vec)
            .ok_or(TransportError::CardRemoved)
    }
}

impl CardBackend for ScriptedCard<'_> {
    fn transaction(&mut self) -> Result<Box<dyn CardTransaction + '_>, TransportError> {
        Ok(Box::new(ScriptedTransaction { card: self }))
    }

    fn capabilities(&self) -> LinkCapabilities {
        self.capabilities
    }

    fn name(&self) -> String {
        "fuzz card".to_owned()
    }
}

/// How many operations [`host_operation`] knows.
pub const OPERATIONS: usize = 24;

/// Runs PivSession operation `index` (0 to [`OPERATIONS`] - 1: every operation the host has,
/// with the test PIN, PUK and management key); returns false once the card is gone.
pub fn host_operation(session: &mut PivSession<'_>, index: usize) -> bool {
    let pin = || Pin::new("123456").expect("valid PIN");
    let puk = || Puk::new("12345678").expect("valid PUK");
    let message = b"header.payload";
    let result: Result<(), PivError> = match index {
        0 => session.select().map(drop),
        1 => session.chuid().map(drop),
        2 => session.discovery().map(drop),
        3 => session.serial().map(drop),
        4 => session.metadata(KeyReference::PivAuthentication).map(drop),
        5 => session.puk_status().map(drop),
        6 => session
            .certificate(KeyReference::PivAuthentication)
            .map(drop),
        7 => session.pin_status().map(drop),
        8 => session.pin_retries().map(drop),
        9 => session.verify_pin(&pin()),
        10 => session.reset_pin_status(),
        11 => session.change_pin(&pin(), &pin()),
        12 => session.change_puk(&puk(), &puk()),
        13 => session.unblock_pin(&puk(), &pin()),
        14 => session
            .sign(
                KeyReference::PivAuthentication,
                Algorithm::Rsa2048,
                JwsAlgorithm::Rs256,
                message,
            )
            .map(drop),
        15 => session
            .sign(
                KeyReference::PivAuthentication,
                Algorithm::EccP256,
                JwsAlgorithm::Es256,
                message,
            )
            .map(drop),
        16 => session
            .sign(
                KeyReference::DigitalSignature,
                Algorithm::EccP384,
                JwsAlgorithm::Es384,
                message,
            )
            .map(drop),
        17 => {
            let mut point = vec![0x04];
            point.extend_from_slice(&[0x11; 64]);
            session
                .key_agreement(KeyReference::KeyManagement, Algorithm::EccP256, &point)
                .map(drop)
        }
        18 => session.authenticate_management_key(&ManagementKey::default_key()),
        19 | 20 => {
            let algorithm = if index == 19 {
                Algorithm::EccP256
            } else {
                Algorithm::Rsa2048
            };
            match session.generate_key(KeyReference::PivAuthentication, algorithm) {
                Ok(key) => certificate_request(
                    session,
                    KeyReference::PivAuthentication,
                    &key,
                    "Fuzz Example",
                )
                .map(drop)
                .map_err(|error| {
                    let _ = error.to_string();
                    PivError::NoPivApplication
                }),
                Err(error) => Err(error),
            }
        }
        21 => session.read_object(ObjectTag::Chuid).map(drop),
        22 => session.put_certificate(
            KeyReference::PivAuthentication,
            &[0x30, 0x03, 0x02, 0x01, 0x01],
        ),
        _ => session.reset_application(),
    };
    match result {
        Ok(()) => true,
        Err(error) => {
            // Messages are built from card data too: they must not panic either.
            let _ = (error.to_string(), format!("{error:?}"));
            !matches!(error, PivError::Transport(TransportError::CardRemoved))
        }
    }
}
