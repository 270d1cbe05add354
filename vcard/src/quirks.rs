//! Third-party card behaviours the virtual card can take on, so hosts (pivtap among them) are tested against cards that differ from pivtap's own.

use std::fmt;
use std::str::FromStr;

/// One way a third-party PIV card differs from pivtap's virtual card.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Quirk {
    /// `strict-7c`: GENERAL AUTHENTICATE for the management key takes only
    /// the elements a step needs; the second step of the mutual
    /// authentication with an empty response request (`7C { 82 00, 80 ..,
    /// 81 .. }`) is refused with `6A80`.
    StrictTemplate,
    /// `plain-6300`: a wrong PIN or PUK (VERIFY, CHANGE REFERENCE DATA,
    /// RESET RETRY COUNTER) is answered `6300`, without the tries left
    /// (`63Cx`); the try is spent all the same.
    PlainWrongPinStatus,
    /// `keep-pin-on-reset`: a warm reset does not clear a verified PIN; only
    /// VERIFY with P1 `FF`, or taking the card out, does.
    KeepPinOnReset,
}

impl Quirk {
    /// Every quirk, in the order they are written.
    pub const ALL: [Quirk; 3] = [
        Quirk::StrictTemplate,
        Quirk::PlainWrongPinStatus,
        Quirk::KeepPinOnReset,
    ];

    /// The quirk's name in the card image and on the command line.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Quirk::StrictTemplate => "strict-7c",
            Quirk::PlainWrongPinStatus => "plain-6300",
            Quirk::KeepPinOnReset => "keep-pin-on-reset",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Quirk::StrictTemplate => 1,
            Quirk::PlainWrongPinStatus => 2,
            Quirk::KeepPinOnReset => 4,
        }
    }
}

impl fmt::Display for Quirk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A quirk name that is not one of [`Quirk::ALL`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown card quirk `{found}`; expected one of strict-7c, plain-6300, keep-pin-on-reset")]
pub struct UnknownQuirk {
    /// The name given.
    pub found: String,
}

impl FromStr for Quirk {
    type Err = UnknownQuirk;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Quirk::ALL
            .into_iter()
            .find(|quirk| quirk.name() == text.trim())
            .ok_or_else(|| UnknownQuirk {
                found: text.trim().to_owned(),
            })
    }
}

/// A set of [`Quirk`]s; empty (the default) is pivtap's own behaviour.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Quirks(u8);

impl Quirks {
    /// No quirks: the virtual card as pivtap makes it.
    pub const NONE: Quirks = Quirks(0);

    /// The behaviours of a third-party card pivtap must handle: every quirk.
    #[must_use]
    pub fn third_party() -> Self {
        Quirk::ALL.into_iter().collect()
    }

    /// Whether `quirk` is in the set.
    #[must_use]
    pub fn contains(self, quirk: Quirk) -> bool {
        self.0 & quirk.bit() != 0
    }

    /// The set with `quirk` added.
    #[must_use]
    pub fn with(self, quirk: Quirk) -> Self {
        Quirks(self.0 | quirk.bit())
    }

    /// Every quirk of either set.
    #[must_use]
    pub fn union(self, other: Quirks) -> Self {
        Quirks(self.0 | other.0)
    }

    /// Whether the set is empty.
    #[must_use]
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The quirks in the set, in [`Quirk::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Quirk> {
        Quirk::ALL
            .into_iter()
            .filter(move |quirk| self.contains(*quirk))
    }
}

impl FromIterator<Quirk> for Quirks {
    fn from_iter<I: IntoIterator<Item = Quirk>>(quirks: I) -> Self {
        quirks.into_iter().fold(Quirks::NONE, Quirks::with)
    }
}

/// Comma-separated names, e.g. `strict-7c,plain-6300`; empty for none.
impl fmt::Display for Quirks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Quirk::name).collect();
        f.write_str(&names.join(","))
    }
}

/// Parses comma-separated quirk names (white space and empty items ignored).
impl FromStr for Quirks {
    type Err = UnknownQuirk;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        text.split(',')
            .filter(|item| !item.trim().is_empty())
            .map(Quirk::from_str)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for quirk in Quirk::ALL {
            assert_eq!(quirk.name().parse::<Quirk>(), Ok(quirk));
        }
        let all: Quirks = "keep-pin-on-reset, strict-7c,plain-6300".parse().unwrap();
        assert_eq!(all, Quirks::third_party());
        assert_eq!(all.to_string(), "strict-7c,plain-6300,keep-pin-on-reset");
        assert_eq!("".parse::<Quirks>(), Ok(Quirks::NONE));
        assert!(Quirks::NONE.is_empty());
        assert_eq!(
            Quirks::NONE
                .with(Quirk::StrictTemplate)
                .union(Quirks::NONE.with(Quirk::KeepPinOnReset))
                .to_string(),
            "strict-7c,keep-pin-on-reset"
        );
        let one: Quirks = "plain-6300".parse().unwrap();
        assert!(one.contains(Quirk::PlainWrongPinStatus));
        assert!(!one.contains(Quirk::StrictTemplate));
        assert_eq!(
            "strict-7c,lenient".parse::<Quirks>(),
            Err(UnknownQuirk {
                found: "lenient".to_owned()
            })
        );
    }
}
