//! Durations as people write them (`90s`, `15m`, `2h`, `7d`, `1h30m`), for the command line and configuration files.
//!
//! A bare number is seconds, so every `*_seconds` key and `--timeout 10` that took a number
//! still reads the same. Units: `s`, `m`, `h`, `d` (also `sec`, `min`, `hour(s)`, `day(s)`,
//! `second(s)`, `minute(s)`). Parts add up: `1h30m` is 5400 seconds.

use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Why a text is not a duration (the message shows the accepted forms).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not a number with a unit.
    #[error(
        "{text:?} is not a duration: write seconds (90) or a number with a unit: 90s, 15m, 2h, 7d"
    )]
    Malformed {
        /// What was given.
        text: String,
    },
    /// Too long to count in seconds.
    #[error("{text:?} is too long a duration")]
    Overflow {
        /// What was given.
        text: String,
    },
}

/// Reads `90`, `90s`, `15m`, `2h`, `7d` or a sum such as `1h30m` (spaces between parts allowed).
///
/// # Errors
/// [`DurationError`] for anything else, or a sum beyond `u64` seconds.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let malformed = || DurationError::Malformed {
        text: text.to_owned(),
    };
    let overflow = || DurationError::Overflow {
        text: text.to_owned(),
    };
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(malformed());
    }
    if trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return trimmed
            .parse()
            .map(Duration::from_secs)
            .map_err(|_| overflow());
    }
    let mut rest = trimmed;
    let mut total: u64 = 0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(malformed());
        }
        let count: u64 = rest[..digits].parse().map_err(|_| overflow())?;
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let seconds_per_unit = unit_seconds(&rest[..unit_len]).ok_or_else(malformed)?;
        rest = rest[unit_len..].trim_start();
        total = count
            .checked_mul(seconds_per_unit)
            .and_then(|seconds| total.checked_add(seconds))
            .ok_or_else(overflow)?;
    }
    Ok(Duration::from_secs(total))
}

/// Seconds in one `unit`, or `None` for a unit this reader does not know.
fn unit_seconds(unit: &str) -> Option<u64> {
    Some(match unit.to_ascii_lowercase().as_str() {
        "s" | "sec" | "secs" | "second" | "seconds" => 1,
        "m" | "min" | "mins" | "minute" | "minutes" => 60,
        "h" | "hour" | "hours" => 3600,
        "d" | "day" | "days" => 86_400,
        _ => return None,
    })
}

/// For `#[serde(deserialize_with = "crate::duration::seconds")]` on a `u64` seconds field:
/// takes a number of seconds (as before) or a duration text such as `"15m"`.
///
/// # Errors
/// A serde error naming the accepted forms.
pub fn seconds<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Seconds {
        Number(u64),
        Text(String),
    }
    match Seconds::deserialize(deserializer) {
        Ok(Seconds::Number(seconds)) => Ok(seconds),
        Ok(Seconds::Text(text)) => parse_duration(&text)
            .map(|duration| duration.as_secs())
            .map_err(serde::de::Error::custom),
        Err(_) => Err(serde::de::Error::custom(
            "expected seconds (a whole number) or a duration such as \"90s\", \"15m\", \"2h\", \"7d\"",
        )),
    }
}

/// [`seconds`] for an `Option<u64>` field that may be left out (with `#[serde(default)]`).
///
/// # Errors
/// As [`seconds`].
pub fn optional_seconds<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<u64>, D::Error> {
    seconds(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_seconds_and_units_multiply() {
        let cases = [
            ("90", 90),
            ("90s", 90),
            ("15m", 900),
            ("2h", 7200),
            ("7d", 604_800),
            ("1h30m", 5400),
            ("1h 30m", 5400),
            (" 10 ", 10),
            ("5 minutes", 300),
            ("0s", 0),
        ];
        for (text, seconds) in cases {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(seconds)),
                "{text}"
            );
        }
    }

    #[test]
    fn anything_else_is_refused_with_the_forms_to_write() {
        for text in ["", "m", "15x", "1.5h", "-5s", "h2", "15m!", "2 h x"] {
            let error = parse_duration(text).unwrap_err();
            assert!(
                matches!(error, DurationError::Malformed { .. }),
                "{text}: {error:?}"
            );
            assert!(error.to_string().contains("15m"), "{error}");
        }
        assert!(matches!(
            parse_duration("99999999999999999999s"),
            Err(DurationError::Overflow { .. })
        ));
        assert!(matches!(
            parse_duration("18446744073709551615d"),
            Err(DurationError::Overflow { .. })
        ));
    }

    #[test]
    fn configuration_seconds_take_numbers_or_durations() {
        #[derive(Deserialize)]
        struct Section {
            #[serde(deserialize_with = "seconds")]
            timeout_seconds: u64,
        }
        let read = |text: &str| toml::from_str::<Section>(text).map(|s| s.timeout_seconds);
        assert_eq!(read("timeout_seconds = 30").unwrap(), 30);
        assert_eq!(read("timeout_seconds = \"15m\"").unwrap(), 900);
        let wrong = read("timeout_seconds = \"soon\"").unwrap_err().to_string();
        assert!(wrong.contains("\"soon\" is not a duration"), "{wrong}");
        let negative = read("timeout_seconds = -1").unwrap_err().to_string();
        assert!(negative.contains("expected seconds"), "{negative}");
    }
}
