//! The APDU trace: every raw command and response in hex through `tracing`, with the secrets of sensitive commands replaced by `REDACTED (n bytes)`.
//!
//! Everything goes to the target [`TARGET`] (`pivtap::apdu`):
//! - TRACE: one event per raw APDU, `>> 00A40400 0B A000000308... 00` for a
//!   command (header, Lc, data, Le) and `<< 61... 9000` for a response (data, SW).
//! - DEBUG: one summary per command sent through [`crate::exchange::send`]:
//!   instruction, status, response size and number of APDUs; never data.
//!
//! `RUST_LOG=pivtap::apdu=trace` shows both, `=debug` only the summaries.
//!
//! A command is sensitive when its [`CommandApdu`] is marked so, or when its
//! header alone says so ([`commands::is_sensitive`]: VERIFY, CHANGE REFERENCE
//! DATA, RESET RETRY COUNTER, GENERAL AUTHENTICATE with the management key),
//! which covers raw bytes that arrive without a `CommandApdu`. Its data field
//! is redacted, and so is the data of its responses, including the parts
//! fetched with GET RESPONSE (a management-key GENERAL AUTHENTICATE answers
//! with the encrypted witness or challenge).

use pivtap_apdu::piv::{Ins, commands};
use pivtap_apdu::{CommandApdu, ResponseApdu};

/// The `tracing` target of every APDU event.
pub const TARGET: &str = "pivtap::apdu";

/// Formats a raw command as `>> HEADER LC DATA LE`, redacting the data when
/// the header marks the command as sensitive.
#[must_use]
pub fn format_command(raw: &[u8]) -> String {
    render_command(raw, header_is_sensitive(raw))
}

/// Formats a raw response as `<< DATA SW`, redacting the data when it answers
/// a sensitive command.
#[must_use]
pub fn format_response(raw: &[u8], command_was_sensitive: bool) -> String {
    match raw.split_last_chunk::<2>() {
        None => format!("<< {} (too short for a response)", hex::encode_upper(raw)),
        Some(([], status)) => format!("<< {}", hex::encode_upper(status)),
        Some((data, status)) if command_was_sensitive => format!(
            "<< REDACTED ({} bytes) {}",
            data.len(),
            hex::encode_upper(status)
        ),
        Some((data, status)) => format!(
            "<< {} {}",
            hex::encode_upper(data),
            hex::encode_upper(status)
        ),
    }
}

/// Traces the raw APDUs of one card connection, remembering whether the
/// responses now arriving answer a sensitive command (GET RESPONSE continues
/// the response of the command before it).
#[derive(Debug, Default)]
pub struct ApduTracer {
    redact_responses: bool,
}

impl ApduTracer {
    /// A tracer that has seen no command yet.
    #[must_use]
    pub fn new() -> Self {
        ApduTracer::default()
    }

    /// Traces a raw command. `marked_sensitive` is the [`CommandApdu`]'s own
    /// marking (false for raw bytes); the header is judged as well.
    pub fn command(&mut self, raw: &[u8], marked_sensitive: bool) {
        let sensitive = marked_sensitive || header_is_sensitive(raw);
        let continues_response = raw
            .get(1)
            .is_some_and(|&ins| Ins::from(ins) == Ins::GetResponse);
        if !continues_response {
            self.redact_responses = sensitive;
        }
        tracing::trace!(target: TARGET, "{}", render_command(raw, sensitive));
    }

    /// Traces a raw response to the last command traced.
    pub fn response(&self, raw: &[u8]) {
        tracing::trace!(target: TARGET, "{}", format_response(raw, self.redact_responses));
    }
}

/// Logs the one-line DEBUG summary of a command and its final response.
pub fn trace_exchange_summary(command: &CommandApdu, response: &ResponseApdu, apdus: u64) {
    tracing::debug!(
        target: TARGET,
        ins = ?Ins::from(command.ins),
        status = %response.status(),
        response_bytes = response.data().len(),
        apdus,
        "card command"
    );
}

fn header_is_sensitive(raw: &[u8]) -> bool {
    raw.first_chunk::<4>()
        .is_some_and(|[_, ins, _, p2]| commands::is_sensitive(*ins, *p2))
}

fn render_command(raw: &[u8], redact: bool) -> String {
    let Some((header, body)) = raw.split_first_chunk::<4>() else {
        return format!(">> {} (too short for a command)", hex::encode_upper(raw));
    };
    let mut line = format!(">> {}", hex::encode_upper(header));
    let fields = CommandApdu::from_bytes(raw)
        .ok()
        .and_then(|command| split_body(body, command.data().len()));
    match fields {
        Some(BodyFields { lc, data, le }) => {
            if !data.is_empty() {
                line.push(' ');
                line.push_str(&hex::encode_upper(lc));
                line.push(' ');
                line.push_str(&redactable_hex(data, redact));
            }
            if !le.is_empty() {
                line.push(' ');
                line.push_str(&hex::encode_upper(le));
            }
        }
        None => {
            line.push(' ');
            line.push_str(&redactable_hex(body, redact));
            line.push_str(" (malformed)");
        }
    }
    line
}

fn redactable_hex(bytes: &[u8], redact: bool) -> String {
    if redact {
        format!("REDACTED ({} bytes)", bytes.len())
    } else {
        hex::encode_upper(bytes)
    }
}

/// The length fields and data of a well-formed command body.
struct BodyFields<'a> {
    lc: &'a [u8],
    data: &'a [u8],
    le: &'a [u8],
}

fn split_body(body: &[u8], data_len: usize) -> Option<BodyFields<'_>> {
    if data_len == 0 {
        return Some(BodyFields {
            lc: &[],
            data: &[],
            le: body,
        });
    }
    // A short Lc is never 00 when data follows; an extended Lc is 00 xx xx.
    let lc_len = if body.first() == Some(&0) { 3 } else { 1 };
    let (lc, rest) = body.split_at_checked(lc_len)?;
    let (data, le) = rest.split_at_checked(data_len)?;
    Some(BodyFields { lc, data, le })
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use pivtap_apdu::LengthMode;
    use pivtap_apdu::piv::{Algorithm, KeyReference, Pin, Puk};
    use tracing::Level;

    use super::*;
    use crate::exchange::{Link, send};
    use crate::transport::LinkCapabilities;
    use crate::transport::scripted::ScriptedCard;

    const PIN_HEX: &str = "393138323733";
    const PUK_HEX: &str = "3132333435363738";

    fn raw(hex: &str) -> Vec<u8> {
        hex::decode(hex.replace(' ', "")).unwrap()
    }

    fn encoded(command: &CommandApdu) -> String {
        hex::encode_upper(command.to_bytes(LengthMode::Short).unwrap())
    }

    #[test]
    fn formats_a_plain_command_field_by_field() {
        assert_eq!(
            format_command(&raw("00A404000BA00000030800001000010000")),
            ">> 00A40400 0B A000000308000010000100 00"
        );
        assert_eq!(format_command(&raw("00CB3FFF")), ">> 00CB3FFF");
        assert_eq!(format_command(&raw("00C0000010")), ">> 00C00000 10");
        assert_eq!(
            format_command(&raw("00DB3FFF 000003 5C0101 0000")),
            ">> 00DB3FFF 000003 5C0101 0000"
        );
    }

    #[test]
    fn redacts_commands_that_carry_reference_data() {
        for (command, shown) in [
            (
                "0020008008 393138323733FFFF",
                ">> 00200080 08 REDACTED (8 bytes)",
            ),
            (
                "0024008010 393138323733FFFF 3132333435363738",
                ">> 00240080 10 REDACTED (16 bytes)",
            ),
            (
                "002C008010 3132333435363738 393138323733FFFF",
                ">> 002C0080 10 REDACTED (16 bytes)",
            ),
            // A chained part of a management-key GENERAL AUTHENTICATE.
            ("1087039B04 7C028000", ">> 1087039B 04 REDACTED (4 bytes)"),
            // Malformed: the body still hides.
            (
                "0020008009 393138323733",
                ">> 00200080 REDACTED (7 bytes) (malformed)",
            ),
        ] {
            let line = format_command(&raw(command));
            assert_eq!(line, shown);
            assert!(!line.contains(PIN_HEX) && !line.contains(PUK_HEX), "{line}");
        }
    }

    #[test]
    fn keeps_non_secret_general_authenticate_and_verify_status() {
        // Signing with 9A is not secret; VERIFY without data has nothing to hide.
        assert_eq!(
            format_command(&raw("008711 9A 04 7C028200")),
            ">> 0087119A 04 7C028200"
        );
        assert_eq!(format_command(&raw("00200080")), ">> 00200080");
    }

    #[test]
    fn formats_odd_commands_without_panicking() {
        assert_eq!(
            format_command(&raw("00A4")),
            ">> 00A4 (too short for a command)"
        );
        assert_eq!(format_command(&raw("")), ">>  (too short for a command)");
        assert_eq!(
            format_command(&raw("00A4040005AABB")),
            ">> 00A40400 05AABB (malformed)"
        );
    }

    #[test]
    fn formats_responses() {
        assert_eq!(format_response(&raw("9000"), false), "<< 9000");
        assert_eq!(
            format_response(&raw("010203 6105"), false),
            "<< 010203 6105"
        );
        assert_eq!(
            format_response(&raw("7C0A800801020304050607089000"), true),
            "<< REDACTED (12 bytes) 9000"
        );
        assert_eq!(format_response(&raw("63C2"), true), "<< 63C2");
        assert_eq!(
            format_response(&raw("90"), false),
            "<< 90 (too short for a response)"
        );
    }

    /// A `MakeWriter` target that keeps everything written.
    #[derive(Clone, Default)]
    struct CapturedOutput(Arc<Mutex<Vec<u8>>>);

    impl io::Write for CapturedOutput {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Runs `body` with a TRACE-level subscriber and returns what it printed.
    /// Serialises the captures: tracing's callsite interest and max-level
    /// caches are process-wide.
    static CAPTURE: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// A second dispatcher registered for the life of the test process. With
    /// only one registered dispatcher, tracing-core computes callsite interest
    /// from whichever thread first hits a callsite; a test thread without a
    /// subscriber then caches "never" and a capture on another thread misses
    /// its events. With two, interest is computed over all of them.
    static KEEP_REGISTRY_SHARED: std::sync::LazyLock<tracing::Dispatch> =
        std::sync::LazyLock::new(|| {
            tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default())
        });

    fn capture_trace(body: impl FnOnce()) -> String {
        let _serial = CAPTURE
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::sync::LazyLock::force(&KEEP_REGISTRY_SHARED);
        let output = CapturedOutput::default();
        let writer = output.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::callsite::rebuild_interest_cache();
            body();
        });
        let bytes = output.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn trace_never_shows_pin_or_puk() {
        let pin = Pin::new("918273").unwrap();
        let other_pin = Pin::new("564738").unwrap();
        let puk = Puk::new("12345678").unwrap();
        let select = commands::select();
        let verify = commands::verify_pin(KeyReference::Pin, &pin);
        let change = commands::change_pin(&pin, &other_pin);
        let reset = commands::reset_retry_counter(&puk, &pin);
        let output = capture_trace(|| {
            let mut card = ScriptedCard::new(vec![
                (encoded(&select), "610A".to_owned()),
                (
                    "00C000000A".to_owned(),
                    "4F0506070809AABBCCDD 9000".to_owned(),
                ),
                (encoded(&verify), "9000".to_owned()),
                (encoded(&change), "9000".to_owned()),
                (encoded(&reset), "9000".to_owned()),
            ]);
            let mut link = Link::new(LinkCapabilities::default());
            for command in [&select, &verify, &change, &reset] {
                send(&mut card, &mut link, command).unwrap();
            }
        });
        // The trace works at all: SELECT's data and response appear.
        assert!(output.contains("A000000308"), "{output}");
        assert!(output.contains("4F0506070809AABBCCDD 9000"), "{output}");
        assert!(output.contains("REDACTED (8 bytes)"), "{output}");
        assert_eq!(output.matches("REDACTED (16 bytes)").count(), 2, "{output}");
        assert!(output.contains("card command"), "{output}");
        for secret in [
            PIN_HEX,
            "918273",
            PUK_HEX,
            "12345678",
            "353634373338",
            "564738",
        ] {
            assert!(!output.contains(secret), "{secret} leaked:\n{output}");
        }
    }

    #[test]
    fn trace_hides_the_management_key_exchange_across_get_response() {
        let request = commands::management_witness_request(Algorithm::Aes128);
        let witness = "000102030405060708090A0B0C0D0E0F";
        let output = capture_trace(|| {
            let mut card = ScriptedCard::new(vec![
                (encoded(&request), "6114".to_owned()),
                ("00C0000014".to_owned(), format!("7C128010{witness}9000")),
                (encoded(&commands::select()), "1122 9000".to_owned()),
            ]);
            let mut link = Link::new(LinkCapabilities::default());
            let answer = send(&mut card, &mut link, &request).unwrap();
            assert!(hex::encode_upper(answer.data()).contains(witness));
            // After a plain command, responses show again.
            send(&mut card, &mut link, &commands::select()).unwrap();
        });
        assert!(output.contains("REDACTED (20 bytes) 9000"), "{output}");
        assert!(output.contains("<< 1122 9000"), "{output}");
        assert!(!output.contains(witness), "witness leaked:\n{output}");
    }
}
