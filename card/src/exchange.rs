//! The one send path of every card command: short or extended APDUs, command chaining, `61xx` GET RESPONSE, `6Cxx` retry, APDU counting and the trace.
//!
//! Callers build a [`CommandApdu`] and hand it to [`send`] with the card's
//! [`Link`]; they get back one [`ResponseApdu`] with all the data the card
//! had and its final status, and never see `61xx` or `6Cxx`.

use pivtap_apdu::command::SHORT_MAX_DATA;
use pivtap_apdu::piv::commands::get_response;
use pivtap_apdu::{ApduError, CommandApdu, LengthMode, ResponseApdu, StatusWord};
use thiserror::Error;

use crate::trace::{self, ApduTracer};
use crate::transport::{CardTransaction, LinkCapabilities, TransportError};

/// The most response data [`send`] collects for one command (the largest
/// extended Ne); a card that announces more is faulty or hostile.
pub const MAX_RESPONSE_BYTES: usize = 65_536;

/// The most GET RESPONSE commands [`send`] issues for one command: 64 KiB in
/// 256-byte parts takes 256, so twice that leaves room for cards that hand
/// out smaller parts.
pub const MAX_GET_RESPONSES: usize = 512;

/// Why a command could not be exchanged with the card. A status word other
/// than `9000` is not an error here: it comes back in the [`ResponseApdu`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ExchangeError {
    /// The bytes could not be exchanged.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The card answered with something that is not a response APDU.
    #[error("the card sent a malformed response: {0}")]
    Malformed(ApduError),
    /// The command cannot be encoded (data or Ne beyond the APDU limits).
    #[error("the command cannot be encoded: {0}")]
    InvalidCommand(ApduError),
    /// The card kept announcing more data past [`MAX_RESPONSE_BYTES`] or
    /// [`MAX_GET_RESPONSES`].
    #[error(
        "the card kept announcing more data ({received} bytes after {get_responses} \
         GET RESPONSE commands); it is faulty or not a PIV card"
    )]
    ResponseTooLong {
        /// Response bytes collected when the exchange stopped.
        received: usize,
        /// GET RESPONSE commands sent.
        get_responses: usize,
    },
}

/// Counts of raw APDUs on a link, GET RESPONSE and chained parts included.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExchangeStats {
    /// Command APDUs sent.
    pub apdus: u64,
    /// Bytes of encoded command APDUs sent.
    pub bytes_sent: u64,
    /// Bytes of raw responses received, status words included.
    pub bytes_received: u64,
}

/// The state of one card connection that outlives a single command: the
/// length mode in use (a `6700` fallback to short APDUs is remembered), the
/// counters, and the trace's memory of whether responses are secret.
#[derive(Debug)]
pub struct Link {
    mode: LengthMode,
    stats: ExchangeStats,
    tracer: ApduTracer,
}

impl Link {
    /// A link that starts with extended APDUs when the capabilities claim
    /// them, short ones otherwise.
    #[must_use]
    pub fn new(capabilities: LinkCapabilities) -> Self {
        Link {
            mode: if capabilities.extended_length {
                LengthMode::Extended
            } else {
                LengthMode::Short
            },
            stats: ExchangeStats::default(),
            tracer: ApduTracer::new(),
        }
    }

    /// The length mode in use: extended until the card refuses it.
    #[must_use]
    pub fn mode(&self) -> LengthMode {
        self.mode
    }

    /// The counts since the link was made or the counts were last reset.
    #[must_use]
    pub fn stats(&self) -> ExchangeStats {
        self.stats
    }

    /// Sets the counts back to zero.
    pub fn reset_stats(&mut self) {
        self.stats = ExchangeStats::default();
    }
}

/// Sends one command and returns the card's complete answer.
///
/// - With an extended link, a command whose data and Ne fit a short APDU goes
///   short, any other as one extended APDU. If the card answers `6700` to an
///   extended APDU, the link switches to short APDUs for good and the command
///   is sent again in short form.
/// - With a short link, data over 255 bytes is sent as a chain; a part other
///   than the last that is not answered `9000` ends the exchange with that
///   response. Ne above 256 is sent as `00` and the rest comes by `61xx`.
/// - `61xx` is followed by GET RESPONSE until another status, the data joined.
/// - `6Cxx` makes one resend with the Ne the card asked for.
///
/// Every raw APDU is counted in the link's [`ExchangeStats`] and traced.
///
/// # Errors
/// [`ExchangeError::Transport`] from the transport,
/// [`ExchangeError::Malformed`] for a response under two bytes,
/// [`ExchangeError::InvalidCommand`] for a command beyond the APDU limits,
/// [`ExchangeError::ResponseTooLong`] for a card that never stops sending.
pub fn send(
    transaction: &mut dyn CardTransaction,
    link: &mut Link,
    command: &CommandApdu,
) -> Result<ResponseApdu, ExchangeError> {
    let apdus_before = link.stats.apdus;
    let response = send_with_retries(transaction, link, command)?;
    trace::trace_exchange_summary(command, &response, link.stats.apdus - apdus_before);
    Ok(response)
}

/// How the last APDU of a command ended.
enum Sent {
    /// The whole command reached the card; this answers it.
    Complete(ResponseApdu),
    /// A part of a chain other than the last was refused with this response.
    ChainInterrupted(ResponseApdu),
}

fn send_with_retries(
    transaction: &mut dyn CardTransaction,
    link: &mut Link,
    command: &CommandApdu,
) -> Result<ResponseApdu, ExchangeError> {
    let mut response = match transmit_command(transaction, link, command)? {
        Sent::Complete(response) => response,
        Sent::ChainInterrupted(response) => return Ok(response),
    };
    if let StatusWord::WrongLength(available) = response.status() {
        let retry = command.clone().with_ne(length_from_sw2(available));
        response = match transmit_command(transaction, link, &retry)? {
            Sent::Complete(response) => response,
            Sent::ChainInterrupted(response) => return Ok(response),
        };
    }
    collect_remaining_data(transaction, link, response)
}

/// Sends a command in the link's mode, falling back from extended to short
/// APDUs once when the card answers `6700`.
fn transmit_command(
    transaction: &mut dyn CardTransaction,
    link: &mut Link,
    command: &CommandApdu,
) -> Result<Sent, ExchangeError> {
    if link.mode == LengthMode::Extended {
        let mode = command.natural_mode();
        let response = transmit_apdu(transaction, link, command, mode)?;
        if mode == LengthMode::Short || response.status() != StatusWord::IncorrectLength {
            return Ok(Sent::Complete(response));
        }
        link.mode = LengthMode::Short;
        tracing::debug!(
            target: trace::TARGET,
            "the card refused an extended-length APDU (6700); using short APDUs on this link"
        );
    }
    transmit_chain(transaction, link, command)
}

/// Sends a command as short APDUs, chained when its data needs more than one.
fn transmit_chain(
    transaction: &mut dyn CardTransaction,
    link: &mut Link,
    command: &CommandApdu,
) -> Result<Sent, ExchangeError> {
    let mut parts = command.chain(SHORT_MAX_DATA);
    let final_part = parts.pop().unwrap_or_else(|| command.clone());
    for part in &parts {
        let response = transmit_apdu(transaction, link, part, LengthMode::Short)?;
        if !response.status().is_success() {
            return Ok(Sent::ChainInterrupted(response));
        }
    }
    transmit_apdu(transaction, link, &final_part, LengthMode::Short).map(Sent::Complete)
}

/// Follows `61xx` with GET RESPONSE until the card gives another status.
fn collect_remaining_data(
    transaction: &mut dyn CardTransaction,
    link: &mut Link,
    first: ResponseApdu,
) -> Result<ResponseApdu, ExchangeError> {
    let mut status = first.status();
    let mut data = first.into_data();
    let mut get_responses = 0;
    while let StatusWord::MoreData(available) = status {
        if get_responses == MAX_GET_RESPONSES || data.len() > MAX_RESPONSE_BYTES {
            return Err(ExchangeError::ResponseTooLong {
                received: data.len(),
                get_responses,
            });
        }
        get_responses += 1;
        let request = get_response(length_from_sw2(available));
        let part = transmit_apdu(transaction, link, &request, LengthMode::Short)?;
        status = part.status();
        data.extend_from_slice(part.data());
    }
    Ok(ResponseApdu::new(data, status))
}

/// Encodes, counts, traces and transmits one raw APDU.
fn transmit_apdu(
    transaction: &mut dyn CardTransaction,
    link: &mut Link,
    command: &CommandApdu,
    mode: LengthMode,
) -> Result<ResponseApdu, ExchangeError> {
    let raw = command
        .to_bytes(mode)
        .map_err(ExchangeError::InvalidCommand)?;
    link.tracer.command(&raw, command.is_sensitive());
    link.stats.apdus += 1;
    link.stats.bytes_sent += raw.len() as u64;
    let reply = transaction.transmit(&raw)?;
    link.stats.bytes_received += reply.len() as u64;
    link.tracer.response(&reply);
    ResponseApdu::from_bytes(&reply).map_err(ExchangeError::Malformed)
}

/// The length in the SW2 of `61xx` and `6Cxx`, where `00` means 256.
fn length_from_sw2(sw2: u8) -> usize {
    if sw2 == 0 { 256 } else { usize::from(sw2) }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use pivtap_apdu::piv::{ObjectTag, commands};
    use proptest::prelude::*;

    use super::*;
    use crate::transport::scripted::ScriptedCard;

    const SHORT: LinkCapabilities = LinkCapabilities {
        extended_length: false,
        contactless: false,
    };
    const EXTENDED: LinkCapabilities = LinkCapabilities {
        extended_length: true,
        contactless: false,
    };

    fn hex_of(bytes: &[u8]) -> String {
        hex::encode_upper(bytes)
    }

    fn put_data_of(len: usize) -> (CommandApdu, Vec<u8>) {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        (
            CommandApdu::new(0x00, 0xDB, 0x3F, 0xFF).with_data(data.clone()),
            data,
        )
    }

    /// The three short APDUs of a 600-byte PUT DATA chain.
    fn chained_put_data_steps(data: &[u8]) -> Vec<(String, String)> {
        vec![
            (
                format!("10DB3FFF FF {}", hex_of(&data[..255])),
                "9000".to_owned(),
            ),
            (
                format!("10DB3FFF FF {}", hex_of(&data[255..510])),
                "9000".to_owned(),
            ),
            (
                format!("00DB3FFF 5A {}", hex_of(&data[510..])),
                "9000".to_owned(),
            ),
        ]
    }

    #[test]
    fn plain_success_is_one_apdu() {
        let mut card = ScriptedCard::new(vec![("00A404000BA00000030800001000010000", "61")]);
        let mut link = Link::new(SHORT);
        // A one-byte answer is not a response APDU.
        assert_eq!(
            send(&mut card, &mut link, &commands::select()),
            Err(ExchangeError::Malformed(ApduError::ResponseTooShort {
                len: 1
            }))
        );

        let mut card = ScriptedCard::new(vec![(
            "00A404000BA00000030800001000010000",
            "4F0600001000010079 9000",
        )]);
        let mut link = Link::new(SHORT);
        let response = send(&mut card, &mut link, &commands::select()).unwrap();
        assert_eq!(response.status(), StatusWord::Success);
        assert_eq!(hex_of(response.data()), "4F0600001000010079");
        assert_eq!(
            link.stats(),
            ExchangeStats {
                apdus: 1,
                bytes_sent: 17,
                bytes_received: 11
            }
        );
    }

    #[test]
    fn more_data_is_fetched_with_get_response() {
        let first = vec![0x11; 256];
        let second = vec![0x22; 256];
        let third = vec![0x33; 16];
        let mut card = ScriptedCard::new(vec![
            (
                "00CB3FFF 05 5C035FC105 00".to_owned(),
                format!("{}6100", hex_of(&first)),
            ),
            // 6100 means 256 more.
            ("00C0000000".to_owned(), format!("{}6110", hex_of(&second))),
            ("00C0000010".to_owned(), format!("{}9000", hex_of(&third))),
        ]);
        let mut link = Link::new(SHORT);
        let response = send(
            &mut card,
            &mut link,
            &commands::get_data(ObjectTag::PivAuthenticationCertificate),
        )
        .unwrap();
        assert_eq!(response.status(), StatusWord::Success);
        assert_eq!(response.data(), [first, second, third].concat());
        assert_eq!(
            link.stats(),
            ExchangeStats {
                apdus: 3,
                bytes_sent: 11 + 5 + 5,
                bytes_received: 258 + 258 + 18
            }
        );
    }

    #[test]
    fn wrong_length_is_retried_once_with_the_length_asked_for() {
        let command = CommandApdu::new(0x00, 0xF8, 0x00, 0x00);
        let mut card =
            ScriptedCard::new(vec![("00F80000", "6C04"), ("00F8000004", "01020304 9000")]);
        let mut link = Link::new(SHORT);
        let response = send(&mut card, &mut link, &command).unwrap();
        assert_eq!(response.status(), StatusWord::Success);
        assert_eq!(response.data(), [1, 2, 3, 4]);

        // 6C00 asks for 256; a second 6Cxx comes back as is.
        let mut card = ScriptedCard::new(vec![("00F80000", "6C00"), ("00F8000000", "6C08")]);
        let response = send(&mut card, &mut link, &command).unwrap();
        assert_eq!(response.status(), StatusWord::WrongLength(8));
        assert_eq!(link.stats().apdus, 4);
    }

    #[test]
    fn long_data_is_chained_in_short_mode() {
        let (command, data) = put_data_of(600);
        let mut card = ScriptedCard::new(chained_put_data_steps(&data));
        let mut link = Link::new(SHORT);
        let response = send(&mut card, &mut link, &command).unwrap();
        assert_eq!(response.status(), StatusWord::Success);
        assert_eq!(link.stats().apdus, 3);
    }

    #[test]
    fn a_refused_chain_part_ends_the_exchange() {
        let (command, data) = put_data_of(600);
        let mut steps = chained_put_data_steps(&data);
        steps.truncate(2);
        steps[1].1 = "6A80".to_owned();
        let mut card = ScriptedCard::new(steps);
        let mut link = Link::new(SHORT);
        let response = send(&mut card, &mut link, &command).unwrap();
        assert_eq!(response.status(), StatusWord::IncorrectData);
        assert_eq!(link.stats().apdus, 2);
    }

    #[test]
    fn extended_mode_sends_long_data_in_one_apdu_and_short_commands_short() {
        let (command, data) = put_data_of(600);
        let certificate = vec![0x30; 2048];
        let mut card = ScriptedCard::new(vec![
            (
                format!("00DB3FFF 000258 {}", hex_of(&data)),
                "9000".to_owned(),
            ),
            (
                "00A404000BA00000030800001000010000".to_owned(),
                "9000".to_owned(),
            ),
            (
                "00CB3FFF 000005 5C035FC105 0000".to_owned(),
                format!("{}9000", hex_of(&certificate)),
            ),
        ]);
        let mut link = Link::new(EXTENDED);
        assert_eq!(link.mode(), LengthMode::Extended);
        assert!(
            send(&mut card, &mut link, &command)
                .unwrap()
                .status()
                .is_success()
        );
        assert!(
            send(&mut card, &mut link, &commands::select())
                .unwrap()
                .status()
                .is_success()
        );
        let response = send(
            &mut card,
            &mut link,
            &commands::get_data(ObjectTag::PivAuthenticationCertificate),
        )
        .unwrap();
        assert_eq!(response.data(), certificate);
        assert_eq!(link.mode(), LengthMode::Extended);
        assert_eq!(link.stats().apdus, 3);
    }

    #[test]
    fn incorrect_length_to_extended_falls_back_to_short_for_good() {
        let (command, data) = put_data_of(600);
        let mut steps = vec![(
            format!("00DB3FFF 000258 {}", hex_of(&data)),
            "6700".to_owned(),
        )];
        steps.extend(chained_put_data_steps(&data));
        // The next command goes short at once.
        steps.extend(chained_put_data_steps(&data));
        let mut card = ScriptedCard::new(steps);
        let mut link = Link::new(EXTENDED);
        assert!(
            send(&mut card, &mut link, &command)
                .unwrap()
                .status()
                .is_success()
        );
        assert_eq!(link.mode(), LengthMode::Short);
        assert!(
            send(&mut card, &mut link, &command)
                .unwrap()
                .status()
                .is_success()
        );
        assert_eq!(link.stats().apdus, 7);
    }

    #[test]
    fn incorrect_length_to_a_short_apdu_is_returned_as_is() {
        let mut card = ScriptedCard::new(vec![("00A404000BA00000030800001000010000", "6700")]);
        let mut link = Link::new(EXTENDED);
        let response = send(&mut card, &mut link, &commands::select()).unwrap();
        assert_eq!(response.status(), StatusWord::IncorrectLength);
        assert_eq!(link.mode(), LengthMode::Extended);
    }

    #[test]
    fn stats_count_every_apdu_and_reset() {
        let mut card = ScriptedCard::new(vec![
            ("00F80000", "6C02"),
            ("00F8000002", "0102 6101"),
            ("00C0000001", "03 9000"),
        ]);
        let mut link = Link::new(SHORT);
        let response = send(&mut card, &mut link, &CommandApdu::new(0, 0xF8, 0, 0)).unwrap();
        assert_eq!(response.data(), [1, 2, 3]);
        assert_eq!(
            link.stats(),
            ExchangeStats {
                apdus: 3,
                bytes_sent: 4 + 5 + 5,
                bytes_received: 2 + 4 + 3
            }
        );
        link.reset_stats();
        assert_eq!(link.stats(), ExchangeStats::default());
    }

    /// A card that answers every command with the same bytes.
    struct EndlessCard {
        answer: Vec<u8>,
    }

    impl CardTransaction for EndlessCard {
        fn transmit(&mut self, _command: &[u8]) -> Result<Vec<u8>, TransportError> {
            Ok(self.answer.clone())
        }
    }

    #[test]
    fn an_endless_stream_of_more_data_is_cut_off() {
        let mut full_parts = vec![0x55; 256];
        full_parts.extend_from_slice(&[0x61, 0x00]);
        let mut card = EndlessCard { answer: full_parts };
        let mut link = Link::new(SHORT);
        let result = send(&mut card, &mut link, &CommandApdu::new(0, 0xCB, 0x3F, 0xFF));
        assert!(
            matches!(result, Err(ExchangeError::ResponseTooLong { received, .. }) if received > MAX_RESPONSE_BYTES),
            "{result:?}"
        );
        assert!(link.stats().apdus <= 258, "{:?}", link.stats());

        let mut card = EndlessCard {
            answer: vec![0x61, 0x01],
        };
        let mut link = Link::new(SHORT);
        let result = send(&mut card, &mut link, &CommandApdu::new(0, 0xCB, 0x3F, 0xFF));
        assert_eq!(
            result,
            Err(ExchangeError::ResponseTooLong {
                received: 0,
                get_responses: MAX_GET_RESPONSES
            })
        );
        assert_eq!(link.stats().apdus, 1 + MAX_GET_RESPONSES as u64);
    }

    /// A card that plays back canned answers, then reports itself removed.
    struct RandomCard {
        answers: VecDeque<Vec<u8>>,
    }

    impl CardTransaction for RandomCard {
        fn transmit(&mut self, _command: &[u8]) -> Result<Vec<u8>, TransportError> {
            self.answers.pop_front().ok_or(TransportError::CardRemoved)
        }
    }

    #[test]
    fn transport_errors_pass_through() {
        let mut card = RandomCard {
            answers: VecDeque::from([vec![0x61, 0x10]]),
        };
        let mut link = Link::new(SHORT);
        assert_eq!(
            send(&mut card, &mut link, &commands::select()),
            Err(ExchangeError::Transport(TransportError::CardRemoved))
        );
        assert_eq!(link.stats().apdus, 2);
    }

    #[test]
    fn oversized_commands_are_refused_before_sending() {
        let mut card = ScriptedCard::new(Vec::<(String, String)>::new());
        let mut link = Link::new(EXTENDED);
        let (command, _) = put_data_of(70_000);
        assert!(matches!(
            send(&mut card, &mut link, &command),
            Err(ExchangeError::InvalidCommand(ApduError::DataTooLong { .. }))
        ));
        assert_eq!(link.stats().apdus, 0);
    }

    fn arbitrary_answer() -> impl Strategy<Value = Vec<u8>> {
        let status = prop_oneof![
            Just(0x9000u16),
            Just(0x6100),
            Just(0x6105),
            Just(0x6C00),
            Just(0x6C10),
            Just(0x6700),
            Just(0x6A80),
        ];
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300),
            (proptest::collection::vec(any::<u8>(), 0..300), status).prop_map(
                |(mut data, status)| {
                    data.extend_from_slice(&status.to_be_bytes());
                    data
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn arbitrary_card_answers_never_panic(
            answers in proptest::collection::vec(arbitrary_answer(), 0..8),
            extended in any::<bool>(),
            data_len in 0usize..700,
            ne in 0usize..=65_536,
        ) {
            let count = answers.len() as u64;
            let mut card = RandomCard { answers: answers.into() };
            let mut link = Link::new(LinkCapabilities { extended_length: extended, contactless: false });
            let command = CommandApdu::new(0, 0xDB, 0x3F, 0xFF)
                .with_data(vec![0xAB; data_len])
                .with_ne(ne);
            let result = send(&mut card, &mut link, &command);
            prop_assert!(link.stats().apdus <= count + 1);
            // 61xx comes back only from a chain part other than the last.
            if let Ok(response) = result {
                let more_data = matches!(response.status(), StatusWord::MoreData(_));
                prop_assert!(!more_data || data_len > SHORT_MAX_DATA);
            }
        }
    }
}
