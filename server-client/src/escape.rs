//! Text from a client made safe for people to read: control characters and invisible or direction-changing marks (zero-width, bidi) become `\u{...}` escapes, and long text is cut to a prefix.

use std::borrow::Cow;

/// Whether `c` must not reach a log, the audit or a terminal raw: C0 and C1 controls,
/// DEL, the zero-width and direction marks U+200B-U+200F, the bidi embeddings and
/// overrides U+202A-U+202E, the bidi isolates U+2066-U+2069 and U+FEFF.
#[must_use]
pub fn is_hazard(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}'
        )
}

/// `text` with every [hazardous](is_hazard) character written `\u{hex}`.
#[must_use]
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_hazard) {
        return Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if is_hazard(c) {
            escaped.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
        } else {
            escaped.push(c);
        }
    }
    Cow::Owned(escaped)
}

/// [`escape`]d `text`, cut to at most `max_chars` characters (the cut marked with `…`).
#[must_use]
pub fn bounded(text: &str, max_chars: usize) -> String {
    let escaped = escape(text);
    if escaped.chars().nth(max_chars).is_none() {
        return escaped.into_owned();
    }
    let mut cut: String = escaped.chars().take(max_chars.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// JSON text (as `serde_json` writes it, pretty or not) with every hazardous character
/// left raw in it (`serde_json` escapes only C0 controls) written as a JSON `\uXXXX`
/// escape: the same JSON value, nothing invisible in a terminal. Such characters only
/// occur inside JSON strings (the layout's line breaks and tabs, outside them, are
/// kept), and all of them are in the basic plane.
#[must_use]
pub fn json_output(json: &str) -> Cow<'_, str> {
    let in_string = |c: char| is_hazard(c) && !matches!(c, '\n' | '\r' | '\t');
    if !json.chars().any(in_string) {
        return Cow::Borrowed(json);
    }
    let mut escaped = String::with_capacity(json.len() + 8);
    for c in json.chars() {
        if in_string(c) {
            escaped.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            escaped.push(c);
        }
    }
    Cow::Owned(escaped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hazards_are_escaped_and_the_rest_kept() {
        assert!(matches!(escape("kiosk-07 é ✓"), Cow::Borrowed(_)));
        assert_eq!(
            escape("a\u{202e}b\u{200b}c\u{7}d\u{85}e\u{feff}f\u{2066}\n"),
            "a\\u{202e}b\\u{200b}c\\u{7}d\\u{85}e\\u{feff}f\\u{2066}\\u{a}"
        );
        for c in [
            '\u{0}', '\u{1f}', '\u{7f}', '\u{80}', '\u{9f}', '\u{200f}', '\u{202a}', '\u{2069}',
        ] {
            assert!(is_hazard(c), "{c:?}");
        }
        for c in [
            'a', ' ', '\u{a0}', '\u{2010}', '\u{2065}', '\u{206a}', '\u{202f}',
        ] {
            assert!(!is_hazard(c), "{c:?}");
        }
    }

    #[test]
    fn bounded_text_is_cut_after_escaping() {
        assert_eq!(bounded("short", 10), "short");
        assert_eq!(bounded("0123456789", 10), "0123456789");
        assert_eq!(bounded("0123456789a", 10), "012345678…");
        assert_eq!(bounded("\u{202e}\u{202e}", 10), "\\u{202e}\\…");
        assert_eq!(bounded(&"x".repeat(16_384), 64).chars().count(), 64);
    }

    #[test]
    fn json_output_is_the_same_value_without_raw_hazards() {
        let value = serde_json::json!({"detail": "a\u{202e}b\u{85}c\u{7}\n"});
        for text in [
            serde_json::to_string(&value).expect("serialises"),
            serde_json::to_string_pretty(&value).expect("serialises"),
        ] {
            let safe = json_output(&text);
            assert!(!safe.chars().any(|c| c != '\n' && is_hazard(c)), "{safe}");
            let back: serde_json::Value = serde_json::from_str(&safe).expect("still JSON");
            assert_eq!(back, value);
        }
    }
}
