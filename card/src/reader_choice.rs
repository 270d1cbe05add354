//! Which PC/SC reader a command means: one named (exactly, or by a unique part of its name), or the one reader holding a card; several holding cards is for the caller to ask about.

use crate::pcsc::ReaderInfo;

/// The reader [`choose_reader`] settled on, or the readers it cannot choose between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReaderChoice<'a> {
    /// The reader named, or the only one holding a card.
    Chosen(&'a ReaderInfo),
    /// No reader was named and cards are in each of these (two or more): one may be someone
    /// else's card, so the caller asks which (or refuses, when there is nobody to ask).
    CardsInSeveral(Vec<&'a ReaderInfo>),
}

/// Why no reader can be chosen. Messages list the readers seen, by name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReaderChoiceError {
    /// PC/SC lists no reader at all.
    #[error("no smart card reader is connected (or pcscd does not see it)")]
    NoReader,
    /// No reader was named and none holds a card.
    #[error("no card in any reader ({}); insert or tap a card", quoted(readers))]
    NoCard {
        /// The readers seen.
        readers: Vec<String>,
    },
    /// The name given matches no reader.
    #[error("no reader matches {wanted:?}; readers: {}", quoted(readers))]
    NoMatch {
        /// The name (part) given.
        wanted: String,
        /// The readers seen.
        readers: Vec<String>,
    },
    /// The name given is part of several readers' names.
    #[error(
        "{wanted:?} matches several readers: {}; give more of the name",
        quoted(matching)
    )]
    SeveralMatch {
        /// The name (part) given.
        wanted: String,
        /// The readers it matches.
        matching: Vec<String>,
    },
}

/// Picks the reader a command means among `readers`: `wanted` is a reader's whole name, or a
/// part of exactly one reader's name in any case; without `wanted`, the one reader holding a
/// card, or [`ReaderChoice::CardsInSeveral`] when cards are in several.
///
/// # Errors
/// [`ReaderChoiceError`] when there is no reader, no card, or no single match for `wanted`.
pub fn choose_reader<'a>(
    readers: &'a [ReaderInfo],
    wanted: Option<&str>,
) -> Result<ReaderChoice<'a>, ReaderChoiceError> {
    let names = |list: &[&ReaderInfo]| list.iter().map(|r| r.name.clone()).collect();
    if readers.is_empty() {
        return Err(ReaderChoiceError::NoReader);
    }
    let all: Vec<&ReaderInfo> = readers.iter().collect();
    match wanted {
        Some(wanted) => {
            if let Some(exact) = readers.iter().find(|r| r.name == wanted) {
                return Ok(ReaderChoice::Chosen(exact));
            }
            let lower = wanted.to_lowercase();
            let matching: Vec<&ReaderInfo> = readers
                .iter()
                .filter(|r| r.name.to_lowercase().contains(&lower))
                .collect();
            match matching.as_slice() {
                [one] => Ok(ReaderChoice::Chosen(one)),
                [] => Err(ReaderChoiceError::NoMatch {
                    wanted: wanted.to_owned(),
                    readers: names(&all),
                }),
                several => Err(ReaderChoiceError::SeveralMatch {
                    wanted: wanted.to_owned(),
                    matching: names(several),
                }),
            }
        }
        None => {
            let with_card: Vec<&ReaderInfo> = readers.iter().filter(|r| r.card_present).collect();
            match with_card.as_slice() {
                [one] => Ok(ReaderChoice::Chosen(one)),
                [] => Err(ReaderChoiceError::NoCard {
                    readers: names(&all),
                }),
                _ => Ok(ReaderChoice::CardsInSeveral(with_card)),
            }
        }
    }
}

/// `"A", "B"`: reader names quoted, as messages show them.
fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|name| format!("{name:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(name: &str, card_present: bool) -> ReaderInfo {
        ReaderInfo {
            name: name.to_owned(),
            card_present,
            atr: None,
            contactless: false,
        }
    }

    fn chosen<'a>(choice: Result<ReaderChoice<'a>, ReaderChoiceError>) -> &'a str {
        match choice {
            Ok(ReaderChoice::Chosen(reader)) => &reader.name,
            other => panic!("no single reader: {other:?}"),
        }
    }

    #[test]
    fn readers_are_chosen_by_name_or_by_the_card_in_them() {
        let readers = [
            reader("Virtual PCD 00 00", false),
            reader("Virtual PCD 00 01", true),
            reader("ACS ACR122U PICC", false),
        ];
        assert_eq!(chosen(choose_reader(&readers, None)), "Virtual PCD 00 01");
        assert_eq!(
            chosen(choose_reader(&readers, Some("acr122"))),
            "ACS ACR122U PICC"
        );
        assert_eq!(
            chosen(choose_reader(&readers, Some("Virtual PCD 00 00"))),
            "Virtual PCD 00 00"
        );
        let several = choose_reader(&readers, Some("virtual")).unwrap_err();
        assert!(
            matches!(&several, ReaderChoiceError::SeveralMatch { matching, .. } if matching.len() == 2)
        );
        assert!(several.to_string().contains("several"), "{several}");
        let none = choose_reader(&readers, Some("omnikey"))
            .unwrap_err()
            .to_string();
        assert!(
            none.contains("no reader matches") && none.contains("ACR122U"),
            "{none}"
        );
        let empty = [reader("Virtual PCD 00 00", false)];
        let no_card = choose_reader(&empty, None).unwrap_err().to_string();
        assert!(
            no_card.contains("no card in any reader") && no_card.contains("\"Virtual PCD 00 00\""),
            "{no_card}"
        );
        assert_eq!(choose_reader(&[], None), Err(ReaderChoiceError::NoReader));
    }

    #[test]
    fn cards_in_several_readers_are_not_chosen_between() {
        let readers = [reader("A", true), reader("B", false), reader("C", true)];
        match choose_reader(&readers, None) {
            Ok(ReaderChoice::CardsInSeveral(holding)) => {
                let names: Vec<&str> = holding.iter().map(|r| r.name.as_str()).collect();
                assert_eq!(names, ["A", "C"]);
            }
            other => panic!("expected the readers to ask about: {other:?}"),
        }
        // Naming one settles it, card or not.
        assert_eq!(chosen(choose_reader(&readers, Some("c"))), "C");
        assert_eq!(chosen(choose_reader(&readers, Some("B"))), "B");
    }
}
