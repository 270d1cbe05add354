//! Text from a client made safe for people to read: control characters and invisible or direction-changing marks (zero-width, bidi) become `\u{...}` escapes, and long text is cut to a prefix.

use std::borrow::Cow;

/// Whether `c` must not reach a log, the audit or a terminal raw, because it is invisible
/// or changes how the text around it is shown: control characters (C0, DEL, C1),
/// zero-width characters, bidirectional marks, embeddings, overrides and isolates, the
/// byte-order mark, invisible operators, variation selectors, interlinear annotation and
/// tag characters (Unicode general category Cc, and the invisible characters of Cf).
#[must_use]
pub fn is_hazard(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00ad}'
                | '\u{034f}'
                | '\u{061c}'
                | '\u{115f}'
                | '\u{1160}'
                | '\u{17b4}'
                | '\u{17b5}'
                | '\u{180b}'..='\u{180f}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{206f}'
                | '\u{3164}'
                | '\u{fe00}'..='\u{fe0f}'
                | '\u{feff}'
                | '\u{ffa0}'
                | '\u{fff0}'..='\u{fffb}'
                | '\u{e0000}'..='\u{e0fff}'
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

/// `text` with every [hazardous](is_hazard) character written `\u{hex}` and each
/// backslash doubled: unlike [`escape`], a literal `\u{200b}` typed into a value reads
/// differently from an escaped zero-width space, so two values that differ always show
/// differently (for values shown as they are stored, such as directory names).
#[must_use]
pub fn escape_unambiguous(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            c if is_hazard(c) => escaped.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => escaped.push(c),
        }
    }
    escaped
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
/// escape (a surrogate pair beyond the basic plane): the same JSON value, nothing
/// invisible in a terminal. Such characters only occur inside JSON strings (the
/// layout's line breaks and tabs, outside them, are kept).
#[must_use]
pub fn json_output(json: &str) -> Cow<'_, str> {
    let in_string = |c: char| is_hazard(c) && !matches!(c, '\n' | '\r' | '\t');
    if !json.chars().any(in_string) {
        return Cow::Borrowed(json);
    }
    let mut escaped = String::with_capacity(json.len() + 8);
    for c in json.chars() {
        if in_string(c) {
            for unit in c.encode_utf16(&mut [0; 2]) {
                escaped.push_str(&format!("\\u{unit:04x}"));
            }
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
            '\u{0}',
            '\u{1f}',
            '\u{7f}',
            '\u{80}',
            '\u{9f}',
            '\u{200f}',
            '\u{202a}',
            '\u{2069}',
            '\u{2065}',
            '\u{206a}',
            '\u{ad}',
            '\u{e0041}',
        ] {
            assert!(is_hazard(c), "{c:?}");
        }
        for c in ['a', ' ', '\u{a0}', '\u{2010}', '\u{202f}', 'é', '日'] {
            assert!(!is_hazard(c), "{c:?}");
        }
    }

    #[test]
    fn unambiguous_escapes_double_backslashes() {
        assert_eq!(escape_unambiguous("Zoë Ødegård 日本"), "Zoë Ødegård 日本");
        assert_eq!(
            escape_unambiguous("a\u{200b}b\u{202e}c\u{2066}d\u{feff}\u{7}\n"),
            "a\\u{200b}b\\u{202e}c\\u{2066}d\\u{feff}\\u{7}\\u{a}"
        );
        assert_eq!(escape_unambiguous("a\\u{200b}"), "a\\\\u{200b}");
        assert_eq!(escape_unambiguous("tag\u{e0041}"), "tag\\u{e0041}");
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
        let value = serde_json::json!({"detail": "a\u{202e}b\u{85}c\u{7}\n tag\u{e0041}"});
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
