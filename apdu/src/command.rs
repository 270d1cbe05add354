//! ISO 7816-4 command APDUs: the seven cases in short and extended form, and command chaining.

use std::fmt;

use zeroize::Zeroizing;

use crate::error::ApduError;

/// The CLA bit that marks a command as one of a chain that is not the last
/// (ISO/IEC 7816-4 §5.4.1).
pub const CLA_CHAINING: u8 = 0x10;

/// Largest command data field of a short APDU.
pub const SHORT_MAX_DATA: usize = 255;
/// Largest Ne of a short APDU (Le byte `00`).
pub const SHORT_MAX_NE: usize = 256;
/// Largest command data field of an extended APDU.
pub const EXTENDED_MAX_DATA: usize = 65_535;
/// Largest Ne of an extended APDU (Le bytes `00 00`).
pub const EXTENDED_MAX_NE: usize = 65_536;

/// How length fields are written: one byte (short) or three and two bytes (extended).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LengthMode {
    /// Lc and Le of one byte: at most 255 data bytes, at most 256 expected.
    Short,
    /// Lc of `00 xx xx` and Le of two bytes: up to 65535 and 65536.
    Extended,
}

/// The ISO/IEC 7816-3 §12.1.3 case of a command APDU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Case {
    /// No data, no Le.
    Case1,
    /// No data, short Le.
    Case2Short,
    /// Short Lc and data, no Le.
    Case3Short,
    /// Short Lc, data and Le.
    Case4Short,
    /// No data, extended Le.
    Case2Extended,
    /// Extended Lc and data, no Le.
    Case3Extended,
    /// Extended Lc, data and Le.
    Case4Extended,
}

/// A command APDU: header, optional data and the expected response length Ne.
///
/// The data is zeroized on drop. A command marked [`sensitive`](Self::sensitive)
/// (PIN, PUK, management key material) prints its data as `REDACTED` in
/// `Debug`, and the card layer's trace does the same.
#[derive(Clone, PartialEq, Eq)]
pub struct CommandApdu {
    /// Class byte.
    pub cla: u8,
    /// Instruction byte.
    pub ins: u8,
    /// Parameter 1.
    pub p1: u8,
    /// Parameter 2.
    pub p2: u8,
    data: Zeroizing<Vec<u8>>,
    ne: usize,
    sensitive: bool,
}

impl CommandApdu {
    /// A case 1 command: header only.
    #[must_use]
    pub fn new(cla: u8, ins: u8, p1: u8, p2: u8) -> Self {
        CommandApdu {
            cla,
            ins,
            p1,
            p2,
            data: Zeroizing::new(Vec::new()),
            ne: 0,
            sensitive: false,
        }
    }

    /// Sets the command data.
    #[must_use]
    pub fn with_data(mut self, data: impl Into<Vec<u8>>) -> Self {
        self.data = Zeroizing::new(data.into());
        self
    }

    /// Sets Ne, the largest number of response bytes expected (0 for none).
    /// Encoding clamps it to the limit of the length mode.
    #[must_use]
    pub fn with_ne(mut self, ne: usize) -> Self {
        self.ne = ne;
        self
    }

    /// Marks the data as secret: redacted in `Debug` and in traces.
    #[must_use]
    pub fn sensitive(mut self) -> Self {
        self.sensitive = true;
        self
    }

    /// The command data field.
    #[must_use]
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The expected response length Ne; 0 when there is no Le field.
    #[must_use]
    pub fn ne(&self) -> usize {
        self.ne
    }

    /// Whether the data is secret.
    #[must_use]
    pub fn is_sensitive(&self) -> bool {
        self.sensitive
    }

    /// Whether the CLA marks this as a non-final command of a chain.
    #[must_use]
    pub fn is_chained(&self) -> bool {
        self.cla & CLA_CHAINING != 0
    }

    /// The case this command encodes to in the given mode.
    #[must_use]
    pub fn case(&self, mode: LengthMode) -> Case {
        match (self.data.is_empty(), self.ne == 0, mode) {
            (true, true, _) => Case::Case1,
            (true, false, LengthMode::Short) => Case::Case2Short,
            (true, false, LengthMode::Extended) => Case::Case2Extended,
            (false, true, LengthMode::Short) => Case::Case3Short,
            (false, true, LengthMode::Extended) => Case::Case3Extended,
            (false, false, LengthMode::Short) => Case::Case4Short,
            (false, false, LengthMode::Extended) => Case::Case4Extended,
        }
    }

    /// The mode that needs the fewest bytes: short when data and Ne fit it.
    #[must_use]
    pub fn natural_mode(&self) -> LengthMode {
        if self.data.len() <= SHORT_MAX_DATA && self.ne <= SHORT_MAX_NE {
            LengthMode::Short
        } else {
            LengthMode::Extended
        }
    }

    /// Encodes the command. Ne above the mode's limit is clamped to it (the
    /// card then answers 61xx for the rest); data above the limit is an error
    /// (split it with [`chain`](Self::chain) first).
    ///
    /// # Errors
    /// [`ApduError::DataTooLong`] or [`ApduError::ExpectedLengthTooLarge`].
    pub fn to_bytes(&self, mode: LengthMode) -> Result<Zeroizing<Vec<u8>>, ApduError> {
        let (max_data, max_ne) = match mode {
            LengthMode::Short => (SHORT_MAX_DATA, SHORT_MAX_NE),
            LengthMode::Extended => (EXTENDED_MAX_DATA, EXTENDED_MAX_NE),
        };
        if self.data.len() > max_data {
            return Err(ApduError::DataTooLong {
                len: self.data.len(),
                max: max_data,
            });
        }
        if self.ne > EXTENDED_MAX_NE {
            return Err(ApduError::ExpectedLengthTooLarge { ne: self.ne });
        }
        let ne = self.ne.min(max_ne);
        let mut out = Zeroizing::new(Vec::with_capacity(4 + 3 + self.data.len() + 3));
        out.extend_from_slice(&[self.cla, self.ins, self.p1, self.p2]);
        match mode {
            LengthMode::Short => {
                if !self.data.is_empty() {
                    out.push(self.data.len() as u8);
                    out.extend_from_slice(&self.data);
                }
                if ne > 0 {
                    // 256 is written as 00.
                    out.push((ne % 256) as u8);
                }
            }
            LengthMode::Extended => {
                if !self.data.is_empty() {
                    out.push(0);
                    out.extend_from_slice(&(self.data.len() as u16).to_be_bytes());
                    out.extend_from_slice(&self.data);
                }
                if ne > 0 {
                    if self.data.is_empty() {
                        out.push(0);
                    }
                    // 65536 is written as 00 00.
                    out.extend_from_slice(&((ne % 65_536) as u16).to_be_bytes());
                }
            }
        }
        Ok(out)
    }

    /// Decodes a command APDU of any case (ISO/IEC 7816-3 §12.1.3).
    ///
    /// # Errors
    /// [`ApduError::CommandTooShort`] or [`ApduError::MalformedBody`] when the
    /// length fields do not match the bytes present.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ApduError> {
        let (header, body) = match bytes.split_first_chunk::<4>() {
            Some(split) => split,
            None => return Err(ApduError::CommandTooShort { len: bytes.len() }),
        };
        let [cla, ins, p1, p2] = *header;
        let command = CommandApdu::new(cla, ins, p1, p2);
        let malformed = ApduError::MalformedBody {
            body_len: body.len(),
        };
        match body {
            [] => Ok(command),
            [le] => Ok(command.with_ne(short_ne(*le))),
            [0, rest @ ..] if rest.len() >= 2 => {
                let (length, rest) = rest.split_at(2);
                let length = usize::from(u16::from_be_bytes([length[0], length[1]]));
                if rest.is_empty() {
                    // Case 2E: 00 Le Le.
                    return Ok(command.with_ne(extended_ne(length)));
                }
                if length == 0 {
                    return Err(malformed);
                }
                match rest.len().checked_sub(length) {
                    Some(0) => Ok(command.with_data(rest.to_vec())),
                    Some(2) => {
                        let le = usize::from(u16::from_be_bytes([rest[length], rest[length + 1]]));
                        Ok(command
                            .with_data(rest[..length].to_vec())
                            .with_ne(extended_ne(le)))
                    }
                    _ => Err(malformed),
                }
            }
            [lc, rest @ ..] if *lc != 0 => {
                let length = usize::from(*lc);
                match rest.len().checked_sub(length) {
                    Some(0) => Ok(command.with_data(rest.to_vec())),
                    Some(1) => Ok(command
                        .with_data(rest[..length].to_vec())
                        .with_ne(short_ne(rest[length]))),
                    _ => Err(malformed),
                }
            }
            _ => Err(malformed),
        }
    }

    /// Splits the command into a chain (ISO/IEC 7816-4 §5.4.1): data chunks of
    /// at most `max_chunk` bytes (1 to 255), every command but the last with
    /// the chaining bit set in CLA, and Ne only on the last. A command whose
    /// data fits comes back alone and unchanged.
    #[must_use]
    pub fn chain(&self, max_chunk: usize) -> Vec<CommandApdu> {
        let max_chunk = max_chunk.clamp(1, SHORT_MAX_DATA);
        if self.data.len() <= max_chunk {
            return vec![self.clone()];
        }
        let chunks: Vec<&[u8]> = self.data.chunks(max_chunk).collect();
        let last = chunks.len() - 1;
        chunks
            .into_iter()
            .enumerate()
            .map(|(index, chunk)| CommandApdu {
                cla: if index == last {
                    self.cla
                } else {
                    self.cla | CLA_CHAINING
                },
                ins: self.ins,
                p1: self.p1,
                p2: self.p2,
                data: Zeroizing::new(chunk.to_vec()),
                ne: if index == last { self.ne } else { 0 },
                sensitive: self.sensitive,
            })
            .collect()
    }
}

fn short_ne(le: u8) -> usize {
    if le == 0 {
        SHORT_MAX_NE
    } else {
        usize::from(le)
    }
}

fn extended_ne(le: usize) -> usize {
    if le == 0 { EXTENDED_MAX_NE } else { le }
}

impl fmt::Debug for CommandApdu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = f.debug_struct("CommandApdu");
        out.field("cla", &format_args!("{:02X}", self.cla))
            .field("ins", &format_args!("{:02X}", self.ins))
            .field("p1", &format_args!("{:02X}", self.p1))
            .field("p2", &format_args!("{:02X}", self.p2));
        if self.sensitive {
            out.field(
                "data",
                &format_args!("REDACTED ({} bytes)", self.data.len()),
            );
        } else {
            out.field("data", &format_args!("{}", hex::encode_upper(&*self.data)));
        }
        out.field("ne", &self.ne).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        hex::decode(s.replace(' ', "")).unwrap()
    }

    #[test]
    fn encodes_every_case() {
        let c = CommandApdu::new(0x00, 0xA4, 0x04, 0x00);
        assert_eq!(*c.to_bytes(LengthMode::Short).unwrap(), hex("00A40400"));
        assert_eq!(c.case(LengthMode::Short), Case::Case1);

        let c2 = c.clone().with_ne(256);
        assert_eq!(*c2.to_bytes(LengthMode::Short).unwrap(), hex("00A4040000"));
        assert_eq!(
            *c2.to_bytes(LengthMode::Extended).unwrap(),
            hex("00A40400000100")
        );

        let c3 = c.clone().with_data(vec![1, 2, 3]);
        assert_eq!(
            *c3.to_bytes(LengthMode::Short).unwrap(),
            hex("00A4040003010203")
        );
        assert_eq!(
            *c3.to_bytes(LengthMode::Extended).unwrap(),
            hex("00A40400 000003 010203")
        );

        let c4 = c3.clone().with_ne(65_536);
        assert_eq!(
            *c4.to_bytes(LengthMode::Short).unwrap(),
            hex("00A404000301020300")
        );
        assert_eq!(
            *c4.to_bytes(LengthMode::Extended).unwrap(),
            hex("00A40400000003010203 0000")
        );
    }

    #[test]
    fn decodes_every_case() {
        let cases = [
            ("00A40400", Case::Case1, 0, 0),
            ("00A4040010", Case::Case2Short, 0, 16),
            ("00A4040000", Case::Case2Short, 0, 256),
            ("00A4040002AABB", Case::Case3Short, 2, 0),
            ("00A4040002AABB00", Case::Case4Short, 2, 256),
            ("00A40400000000", Case::Case2Extended, 0, 65_536),
            ("00A40400000102", Case::Case2Extended, 0, 258),
            ("00A40400000002AABB", Case::Case3Extended, 2, 0),
            ("00A40400000002AABB0100", Case::Case4Extended, 2, 256),
        ];
        for (bytes, case, data_len, ne) in cases {
            let c = CommandApdu::from_bytes(&hex(bytes)).unwrap();
            let mode = if matches!(
                case,
                Case::Case2Extended | Case::Case3Extended | Case::Case4Extended
            ) {
                LengthMode::Extended
            } else {
                LengthMode::Short
            };
            assert_eq!(c.case(mode), case, "{bytes}");
            assert_eq!(c.data().len(), data_len, "{bytes}");
            assert_eq!(c.ne(), ne, "{bytes}");
            assert_eq!(*c.to_bytes(mode).unwrap(), hex(bytes), "{bytes}");
        }
    }

    #[test]
    fn rejects_inconsistent_lengths() {
        for bytes in [
            "00A4",
            "00A4040003AABB",
            "00A4040002AABBCCDD",
            "00A404000000",
            "00A40400000000AA",
            "00A4040000000201",
        ] {
            assert!(CommandApdu::from_bytes(&hex(bytes)).is_err(), "{bytes}");
        }
    }

    #[test]
    fn short_mode_refuses_long_data() {
        let c = CommandApdu::new(0, 0xDB, 0x3F, 0xFF).with_data(vec![0; 256]);
        assert_eq!(
            c.to_bytes(LengthMode::Short),
            Err(ApduError::DataTooLong { len: 256, max: 255 })
        );
        assert_eq!(c.to_bytes(LengthMode::Extended).unwrap().len(), 4 + 3 + 256);
    }

    #[test]
    fn chain_splits_and_marks() {
        let data: Vec<u8> = (0..600u32).map(|i| i as u8).collect();
        let c = CommandApdu::new(0x00, 0xDB, 0x3F, 0xFF)
            .with_data(data.clone())
            .with_ne(256);
        let chain = c.chain(255);
        assert_eq!(chain.len(), 3);
        assert_eq!(
            chain.iter().map(|c| c.data().len()).collect::<Vec<_>>(),
            [255, 255, 90]
        );
        assert!(chain[0].is_chained() && chain[1].is_chained() && !chain[2].is_chained());
        assert_eq!(
            chain.iter().map(CommandApdu::ne).collect::<Vec<_>>(),
            [0, 0, 256]
        );
        let joined: Vec<u8> = chain.iter().flat_map(|c| c.data().to_vec()).collect();
        assert_eq!(joined, data);
    }

    #[test]
    fn debug_redacts_sensitive_data() {
        let c = CommandApdu::new(0, 0x20, 0, 0x80)
            .with_data(b"123456\xFF\xFF".to_vec())
            .sensitive();
        let shown = format!("{c:?}");
        assert!(shown.contains("REDACTED (8 bytes)"), "{shown}");
        assert!(!shown.contains("313233"), "{shown}");
    }

    fn arb_command() -> impl Strategy<Value = CommandApdu> {
        (
            any::<[u8; 4]>(),
            proptest::collection::vec(any::<u8>(), 0..600),
            prop_oneof![Just(0usize), 1usize..=65_536],
        )
            .prop_map(|([cla, ins, p1, p2], data, ne)| {
                CommandApdu::new(cla, ins, p1, p2)
                    .with_data(data)
                    .with_ne(ne)
            })
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = CommandApdu::from_bytes(&bytes);
        }

        #[test]
        fn extended_encoding_round_trips(command in arb_command()) {
            let bytes = command.to_bytes(LengthMode::Extended).unwrap();
            prop_assert_eq!(CommandApdu::from_bytes(&bytes).unwrap(), command);
        }

        #[test]
        fn natural_encoding_round_trips(command in arb_command()) {
            let mode = command.natural_mode();
            let bytes = command.to_bytes(mode).unwrap();
            prop_assert_eq!(CommandApdu::from_bytes(&bytes).unwrap(), command);
        }

        #[test]
        fn chain_preserves_data(command in arb_command(), chunk in 1usize..=255) {
            let chain = command.chain(chunk);
            let joined: Vec<u8> = chain.iter().flat_map(|c| c.data().to_vec()).collect();
            prop_assert_eq!(joined, command.data().to_vec());
            if chain.len() > 1 {
                for c in &chain {
                    prop_assert!(c.data().len() <= chunk);
                    prop_assert!(c.to_bytes(LengthMode::Short).is_ok());
                }
            } else {
                prop_assert_eq!(&chain[0], &command);
            }
        }
    }
}
