//! Showing text that came from outside safely: which characters are invisible or reorder a line (controls, zero-width, bidi), and an escaped form that shows them.

/// Whether `c` is invisible or changes how the text around it is shown: control
/// characters, zero-width characters, bidirectional marks, embeddings, overrides and
/// isolates, the byte-order mark, invisible operators, interlinear annotation and tag
/// characters (Unicode general category Cc, and the invisible characters of Cf).
#[must_use]
pub fn is_invisible(c: char) -> bool {
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

/// `text` with every [`is_invisible`] character written as `\u{XXXX}` and each
/// backslash doubled, so two texts that differ show differently on a terminal.
#[must_use]
pub fn escape_invisible(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            c if is_invisible(c) => escaped.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invisible_characters_are_escaped_and_the_rest_kept() {
        assert_eq!(escape_invisible("Zoë Ødegård 日本"), "Zoë Ødegård 日本");
        assert_eq!(
            escape_invisible("a\u{200b}b\u{202e}c\u{2066}d\u{feff}\u{7}\n"),
            "a\\u{200b}b\\u{202e}c\\u{2066}d\\u{feff}\\u{7}\\u{a}"
        );
        assert_eq!(escape_invisible("a\\u{200b}"), "a\\\\u{200b}");
        assert_eq!(escape_invisible("tag\u{e0041}"), "tag\\u{e0041}");
        assert!(!is_invisible(' '));
        assert!(is_invisible('\u{200d}'));
    }
}
